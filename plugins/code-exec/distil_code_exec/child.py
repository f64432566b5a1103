"""The untrusted side of a grading run: load the solution, then answer calls over a pipe.

A standalone script (standard library only). The harness starts it with a fresh exec as

    python3 -I child.py SOLUTION REQUEST_FD REPLY_FD

so it never holds the run's key or any expected value. Requests and replies are JSON lines;
values travel as ``repr`` text. The harness treats every reply as untrusted: whatever the
solution does to this process can only change the values it answers with.
"""

import ast
import builtins
import json
import linecache
import math
import os
import sys
import traceback

SOLUTION = "solution.py"  # the file name tracebacks show


def _literal(text):
    """Arguments from the harness: literals, with inf/nan spelled as repr writes them."""
    tree = ast.parse(text, mode="eval")
    names = {"inf": math.inf, "nan": math.nan}

    def value(node):
        if isinstance(node, ast.Name) and node.id in names:
            return names[node.id]
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in ("set", "frozenset"):
            items = [value(a) for a in node.args]
            return (set if node.func.id == "set" else frozenset)(*items)
        if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub):
            return -value(node.operand)
        if isinstance(node, (ast.Tuple, ast.List, ast.Set)):
            items = [value(e) for e in node.elts]
            return {ast.Tuple: tuple, ast.List: list, ast.Set: set}[type(node)](items)
        if isinstance(node, ast.Dict):
            return {value(k): value(v) for k, v in zip(node.keys, node.values)}
        return ast.literal_eval(node)

    return value(tree.body)


def _describe(exc):
    """An exception as text, with only the solution's own frames in its traceback."""
    try:
        frames = [f for f in traceback.extract_tb(exc.__traceback__) if f.filename == SOLUTION]
        lines = ["Traceback (most recent call last):\n"] if frames else []
        lines += traceback.StackSummary.from_list(frames).format()
        lines += traceback.format_exception_only(type(exc), exc)
        text = "".join(lines).rstrip()
    except BaseException:
        text = type(exc).__name__
    try:
        message = str(exc)
    except BaseException:
        message = ""
    return {"exc_type": type(exc).__name__, "message": message[:4000], "traceback": text[-8000:]}


def _flush():
    for stream in (sys.stdout, sys.stderr, sys.__stdout__, sys.__stderr__):
        try:
            stream.flush()
        except BaseException:
            pass


def main():
    path, request_fd, reply_fd = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    requests = os.fdopen(request_fd, "rb")
    replies = os.fdopen(reply_fd, "wb")
    if hasattr(sys, "set_int_max_str_digits"):
        sys.set_int_max_str_digits(100_000)

    def send(message):
        _flush()
        replies.write(json.dumps(message).encode() + b"\n")
        replies.flush()

    with open(path, encoding="utf-8", errors="replace") as fh:
        source = fh.read()
    linecache.cache[SOLUTION] = (len(source), None, source.splitlines(True), SOLUTION)
    namespace = {"__name__": "solution", "__file__": SOLUTION, "__builtins__": builtins}
    try:
        exec(compile(source, SOLUTION, "exec"), namespace)
    except BaseException as exc:
        send(dict(_describe(exc), ready=False))
        return
    send({"ready": True})

    for line in requests:
        request = json.loads(line)
        if request.get("op") == "names":
            found = {}
            for name in request["names"]:
                if name not in namespace:
                    found[name] = "missing"
                elif callable(namespace[name]):
                    found[name] = "callable"
                else:
                    try:
                        found[name] = {"value": repr(namespace[name]), "type": type(namespace[name]).__name__}
                    except BaseException:
                        found[name] = {"value": "<no repr>", "type": type(namespace[name]).__name__}
            send({"names": found})
            continue
        name = request["name"]
        if name not in namespace:
            send({"ok": False, "exc_type": "NameError", "message": f"the solution does not define {name!r}",
                  "traceback": f"NameError: the solution does not define {name!r}"})
            continue
        try:
            value = namespace[name](*_literal(request["args"]), **_literal(request["kwargs"]))
            text = repr(value)
        except BaseException as exc:
            send(dict(_describe(exc), ok=False))
            continue
        send({"ok": True, "value": text, "type": type(value).__name__})


if __name__ == "__main__":
    main()
