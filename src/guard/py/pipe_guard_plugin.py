"""pipe's pytest plugin: the test report travels through a pipe, not a file.

The guard must not believe a report that the code under test could have written. pytest runs
the generated tests and implementation in its own process, so any file pytest can write, that
code can write too (a forged ``report.xml`` followed by ``os._exit(0)``). The parent therefore
hands pytest an inherited pipe (its number in ``PIPE_GUARD_FD``) and reads the report from the
other end; nothing in the sandbox's file system is ever read back as a verdict.

This hook runs with ``tryfirst=True`` in ``pytest_configure``: after the initial conftests (we
write none) and before collection, i.e. before any generated code is imported. It

* moves the pipe to a close-on-exec descriptor above 100 and closes the well-known one, so a
  subprocess started by the generated code does not inherit it;
* writes a READY line, which tells the parent that python, pytest and this plugin all started
  (no READY means a broken sandbox, an infrastructure error, never a failed attempt);
* points pytest's own junitxml plugin at ``/proc/self/fd/N``. junitxml reads
  ``config.option.xmlpath`` in its (later) ``pytest_configure`` and reopens the path at
  ``pytest_sessionfinish``; reopening ``/proc/self/fd/N`` of a pipe yields the same pipe (the
  parent chowns it to the sandbox user so the reopen is permitted).

What it does NOT stop: code in the same interpreter that deliberately looks for the pipe
(``/proc/self/fd``, ``gc``, this module's globals) and writes a forged report, or that
monkeypatches pytest. That needs an adversary, not a model that writes a wrong Stack.
"""

import fcntl
import os

import pytest

READY = b"PIPE-GUARD-READY\n"


@pytest.hookimpl(tryfirst=True)
def pytest_configure(config):
    inherited = int(os.environ.pop("PIPE_GUARD_FD"))
    private = fcntl.fcntl(inherited, fcntl.F_DUPFD_CLOEXEC, 100)
    os.close(inherited)
    os.write(private, READY)
    config.option.xmlpath = f"/proc/self/fd/{private}"
