"""pipe's mutant generator: small, deterministic changes to an implementation, made with ``ast``.

Only parses and unparses (never imports) the implementation; runs in the sandbox anyway, so a
pathological input cannot hang pipe. A good test suite fails on (kills) most mutants; one that
asserts nothing kills none.

Mutation sites, in source order (functions and methods, nested ones included, by position):

* ``body``: a function's whole body becomes ``raise NotImplementedError`` (``__init__`` too:
  a suite that never constructs the object cannot notice, and that is worth knowing);
* ``none``: each ``return <expr>`` (not ``return`` / ``return None``) returns ``None`` instead;
* ``not``: each ``return`` of a comparison, ``and``/``or``, ``not`` or bool literal returns the
  negation, which catches suites that only check truthiness or only one branch.

Mutants that unparse to the same tree as the original are dropped (equivalent by
construction). When more than CAP sites remain, CAP of them are taken evenly spaced over the
source-ordered list (index ``k * n // CAP``), so every part of the file is represented and the
choice depends on the code only.

Protocol: argv = [path, CAP]; READY line, then JSON ``{"mutants": [{"description", "source"}],
"sites": n, "error": str|null}`` on the pipe whose number is in ``PIPE_GUARD_FD``.
"""

import ast
import json
import os
import sys

READY = b"PIPE-GUARD-READY\n"
FUNCS = (ast.FunctionDef, ast.AsyncFunctionDef)
SCOPES = FUNCS + (ast.ClassDef, ast.Lambda)


def returns_of(func):
    """The ``return`` statements that belong to ``func`` itself, not to nested scopes."""
    found = []
    stack = list(reversed(func.body))
    while stack:
        node = stack.pop()
        if isinstance(node, ast.Return):
            found.append(node)
        for child in reversed(list(ast.iter_child_nodes(node))):
            if not isinstance(child, SCOPES):
                stack.append(child)
    found.sort(key=lambda n: (n.lineno, n.col_offset))
    return found


def is_boolish(expr):
    if isinstance(expr, (ast.Compare, ast.BoolOp)):
        return True
    if isinstance(expr, ast.UnaryOp) and isinstance(expr.op, ast.Not):
        return True
    return isinstance(expr, ast.Constant) and isinstance(expr.value, bool)


def sites(tree):
    """(kind, qualname, node) for every mutation site, in a fixed (source) order."""
    out = []

    def visit(node, prefix):
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.ClassDef):
                visit(child, prefix + child.name + ".")
            elif isinstance(child, FUNCS):
                name = prefix + child.name
                out.append(("body", name, child))
                for ret in returns_of(child):
                    value = ret.value
                    if value is None or (isinstance(value, ast.Constant) and value.value is None):
                        continue
                    out.append(("none", name, ret))
                    if is_boolish(value):
                        out.append(("not", name, ret))
                visit(child, name + ".")
            else:
                visit(child, prefix)

    visit(tree, "")
    return out


def mutate(kind, node):
    if kind == "body":
        node.body = [ast.Raise(exc=ast.Name(id="NotImplementedError", ctx=ast.Load()), cause=None)]
        return "body replaced by raise NotImplementedError"
    if kind == "none":
        node.value = ast.Constant(value=None)
        return f"line {node.lineno}: returns None instead"
    node.value = ast.UnaryOp(op=ast.Not(), operand=node.value)
    return f"line {node.lineno}: returns the negation"


def main():
    fd = int(os.environ["PIPE_GUARD_FD"])
    os.write(fd, READY)
    path, cap = sys.argv[1], int(sys.argv[2])
    with open(path, encoding="utf-8") as f:
        source = f.read()
    result = {"mutants": [], "sites": 0, "error": None}
    try:
        original = ast.dump(ast.parse(source))
        count = len(sites(ast.parse(source)))
        mutants = []
        for index in range(count):
            tree = ast.parse(source)
            kind, name, node = sites(tree)[index]
            what = mutate(kind, node)
            ast.fix_missing_locations(tree)
            if ast.dump(tree) == original:
                continue
            mutants.append({"description": f"{name}: {what}", "source": ast.unparse(tree) + "\n"})
        result["sites"] = len(mutants)
        if len(mutants) > cap:
            mutants = [mutants[k * len(mutants) // cap] for k in range(cap)]
        result["mutants"] = mutants
    except (SyntaxError, ValueError, RecursionError, MemoryError) as err:
        result = {"mutants": [], "sites": 0, "error": f"{type(err).__name__}: {err}"}
    os.write(fd, json.dumps(result).encode())


main()
