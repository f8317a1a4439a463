"""pipe's syntax guard: CPython's own parser on the generated test file, never executing it.

Runs in the sandbox (``python -I -S``): ``compile`` does not run the code, but a hostile or
merely absurd input (100k nested brackets, a huge file) may exhaust the parser, and the
sandbox's limits turn that into a verdict instead of a hung or crashed pipe.

Protocol: READY line, then one JSON object ``{"ok": bool, "feedback": str}`` on the pipe whose
number is in ``PIPE_GUARD_FD``.
"""

import json
import os
import sys

READY = b"PIPE-GUARD-READY\n"
WINDOW = 120


def feedback_for(err):
    """'SyntaxError: <msg> (line N)', then the offending line with a caret under the column.

    A long line is shown as a window of WINDOW characters around the column, so the feedback
    (which goes into the next prompt) stays small whatever the input.
    """
    name = type(err).__name__
    if not isinstance(err, SyntaxError):
        return f"{name}: {err}"
    head = f"{name}: {err.msg}"
    if err.lineno:
        head += f" (line {err.lineno})"
    text = (err.text or "").rstrip("\n")
    indent = len(text) - len(text.lstrip())
    text = text.strip()
    if not text:
        return head
    column = (err.offset - 1 - indent) if err.offset and err.offset > 0 else None
    if column is not None and not 0 <= column <= len(text):
        column = None
    if len(text) > WINDOW:
        start = 0 if column is None else max(0, min(column - WINDOW // 2, len(text) - WINDOW))
        cut = text[start : start + WINDOW]
        if column is not None:
            column -= start
        if start > 0:
            cut, column = "..." + cut, (None if column is None else column + 3)
        if start + WINDOW < len(text):
            cut += "..."
        text = cut
    lines = [head, "    " + text]
    if column is not None:
        lines.append("    " + " " * column + "^")
    return "\n".join(lines)


def main():
    fd = int(os.environ["PIPE_GUARD_FD"])
    os.write(fd, READY)
    with open(sys.argv[1], encoding="utf-8") as f:
        source = f.read()
    try:
        compile(source, "test_implementation.py", "exec", dont_inherit=True)
        result = {"ok": True, "feedback": ""}
    except (SyntaxError, ValueError, MemoryError, RecursionError, OverflowError) as err:
        result = {"ok": False, "feedback": feedback_for(err)}
    os.write(fd, json.dumps(result).encode())


main()
