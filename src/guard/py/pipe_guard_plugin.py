"""pipe's pytest plugin: the report travels through a pipe, and pytest is watched for tampering.

The guard must not believe a report that the code under test could have written. pytest runs
the generated tests and implementation in its own process, so any file pytest can write, that
code can write too (a forged ``report.xml`` followed by ``os._exit(0)``). The parent therefore
hands pytest an inherited pipe (its number in ``PIPE_GUARD_FD``) and reads the report from the
other end; nothing in the sandbox's file system is ever read back as a verdict.

Nor can the verdict rest on pytest's own objects alone: generated code imported by the tests
runs in this interpreter and can monkeypatch pytest (make every ``TestReport`` say "passed",
turn ``Function.runtest`` into a no-op), and the JUnit report would then praise an empty
class. pipe *selects training data by this verdict*, so that tamper would poison exactly what
the model learns from. Hence a second, independent record, sent before the JUnit report:

* **outcomes from the call results**, not from report objects: a wrapper around
  ``pytest_runtest_makereport`` notes, for every test and phase, whether the phase raised
  (``call.excinfo``) before any report is built from it;
* **collected vs run**: how many tests collection produced, and how many ran their call phase;
* **a fingerprint of pytest** taken just before collection (before any generated code is
  imported) and compared when the session finishes: every function, class, method, property
  and code object of the ``_pytest``, ``pytest`` and ``pluggy`` modules and of this plugin, the
  registered plugins and every hook's implementations. Anything replaced, added or removed is
  reported by name.

The parent (``verdict.rs``) passes a run only when the JUnit report, the record and the
fingerprint agree; a missing record or any disagreement is a failed attempt, "tampered".

Hooks and timing. ``pytest_configure`` runs with ``tryfirst=True``: after the initial conftests
(we write none) and before collection. It moves the pipe to a close-on-exec descriptor above
100 and closes the well-known one (a subprocess of the generated code does not inherit it),
writes a READY line (python, pytest and this plugin all started; no READY means a broken
sandbox, an infrastructure error, never a failed attempt), and points pytest's junitxml plugin
at ``/proc/self/fd/N``: junitxml reopens that path at ``pytest_sessionfinish``, which yields
the same pipe (the parent chowns it to the sandbox user so the reopen is permitted). Our own
``pytest_sessionfinish`` runs first (``tryfirst``) and writes the record line.

What this still does NOT stop, and cannot from inside the same interpreter: code that
deliberately finds the pipe (``/proc/self/fd``, ``gc``, this module's closures) and writes a
forged record and report itself, or that changes what the tests compute without touching
pytest (an object whose ``__eq__`` always says True, rewriting the test functions as they are
defined). The README says so.
"""

import fcntl
import json
import os
import sys
import types

import pytest

READY = b"PIPE-GUARD-READY\n"
RECORD = b"PIPE-GUARD-RECORD "
WATCHED = ("_pytest", "pytest", "pluggy", "pipe_guard_plugin")
# Descriptor kinds whose identity we record; plain data (counters, caches) may change freely.
CALLABLE = (
    types.FunctionType,
    types.BuiltinFunctionType,
    types.MethodType,
    classmethod,
    staticmethod,
    property,
    type,
)


def _watched(name):
    return any(name == w or name.startswith(w + ".") for w in WATCHED)


def _ident(value):
    """What must not change about one attribute: the object and, for functions, its code and
    defaults (assignable in place); for properties and class/static methods, what they wrap."""
    if isinstance(value, (classmethod, staticmethod)):
        return (id(value), _ident(value.__func__))
    if isinstance(value, property):
        return (id(value), _ident(value.fget), _ident(value.fset), _ident(value.fdel))
    code = getattr(value, "__code__", None)
    if isinstance(value, types.FunctionType):
        return (id(value), id(code), id(value.__defaults__), id(value.__kwdefaults__))
    return id(value)


def _fingerprint(pluginmanager):
    seen = {}
    for name, mod in list(sys.modules.items()):
        if mod is None or not _watched(name):
            continue
        seen[f"module {name}"] = id(mod)
        for attr, value in list(vars(mod).items()):
            if not isinstance(value, CALLABLE):
                continue
            seen[f"{name}.{attr}"] = _ident(value)
            if isinstance(value, type) and getattr(value, "__module__", None) == name:
                for k, v in list(vars(value).items()):
                    if isinstance(v, CALLABLE):
                        seen[f"{name}.{attr}.{k}"] = _ident(v)
    for plugin_name, plugin in pluginmanager.list_name_plugin():
        seen[f"plugin {plugin_name}"] = id(plugin)
    for hook_name in dir(pluginmanager.hook):
        caller = getattr(pluginmanager.hook, hook_name)
        impls = getattr(caller, "get_hookimpls", None)
        if impls is not None:
            seen[f"hook {hook_name}"] = tuple(id(i.function) for i in impls())
    return seen


def _changes(before, after):
    """Names of what was replaced, removed or added, sorted; at most 10 with a count."""
    changed = sorted(k for k in before if after.get(k) != before[k])
    # New modules are imported lazily by pytest itself; new attributes of a watched module or
    # class that already existed are not.
    changed += sorted(
        k
        for k in after
        if k not in before and not k.startswith("module ") and _owner_known(k, before)
    )
    return changed


def _owner_known(key, before):
    if key.startswith(("plugin ", "hook ")):
        return True
    owner = key.rsplit(".", 1)[0]
    return f"module {owner}" in before or owner in before


def _install():
    """The plugin's hooks, as closures over private state (not module globals)."""
    state = {"fd": None, "before": None, "collected": None, "ran": set(), "dirty": set()}

    @pytest.hookimpl(tryfirst=True)
    def pytest_configure(config):
        inherited = int(os.environ.pop("PIPE_GUARD_FD"))
        private = fcntl.fcntl(inherited, fcntl.F_DUPFD_CLOEXEC, 100)
        os.close(inherited)
        os.write(private, READY)
        state["fd"] = private
        config.option.xmlpath = f"/proc/self/fd/{private}"

    @pytest.hookimpl(tryfirst=True)
    def pytest_collection(session):
        state["before"] = _fingerprint(session.config.pluginmanager)

    @pytest.hookimpl(trylast=True)
    def pytest_collection_finish(session):
        state["collected"] = len(session.items)

    @pytest.hookimpl(wrapper=True, tryfirst=True)
    def pytest_runtest_makereport(item, call):
        # From the call result itself, before any report object exists.
        if call.when == "call":
            state["ran"].add(item.nodeid)
        if call.excinfo is not None:
            state["dirty"].add(item.nodeid)
        return (yield)

    @pytest.hookimpl(tryfirst=True)
    def pytest_sessionfinish(session):
        if state["fd"] is None:
            return
        before = state["before"]
        changed = (
            ["the fingerprint taken before collection is missing"]
            if before is None
            else _changes(before, _fingerprint(session.config.pluginmanager))
        )
        ran = state["ran"]
        record = {
            "collected": state["collected"],
            "ran": len(ran),
            "clean": len(ran - state["dirty"]),
            "changed": changed[:10],
            "changed_count": len(changed),
        }
        os.write(state["fd"], RECORD + json.dumps(record).encode() + b"\n")

    return types.SimpleNamespace(
        pytest_configure=pytest_configure,
        pytest_collection=pytest_collection,
        pytest_collection_finish=pytest_collection_finish,
        pytest_runtest_makereport=pytest_runtest_makereport,
        pytest_sessionfinish=pytest_sessionfinish,
    )


_hooks = _install()
pytest_configure = _hooks.pytest_configure
pytest_collection = _hooks.pytest_collection
pytest_collection_finish = _hooks.pytest_collection_finish
pytest_runtest_makereport = _hooks.pytest_runtest_makereport
pytest_sessionfinish = _hooks.pytest_sessionfinish
del _hooks
