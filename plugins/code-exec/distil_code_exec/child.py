"""The untrusted side of a grading run: load the solution, then answer calls over a pipe.

A standalone script (standard library only). The harness starts it with a fresh exec as

    python3 -I child.py SOLUTION REQUEST_FD REPLY_FD

so it never holds the run's key or any expected value. Requests and replies are JSON lines;
values travel as ``repr`` text. The harness treats every reply as untrusted: whatever the
solution does to this process can only change the values it answers with.

    python3 -I -c 'exec(compile(<this file>, CHILD_PY, "exec"))' --serve CONTROL_FD

makes it a fork server instead (see ``serve``): a job that grades several rollouts starts one
clean interpreter this way and forks each rollout's child from it, which costs a fork instead
of an interpreter start.
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
VALUE_CHARS = 8 << 20  # a returned value's repr is cut here: twice the harness's REPLY_LIMIT (bytes)


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
            # past the harness's limit on a reply either way: sent cut, so the harness says the value
            # was too large (encoding the whole of a huge one would run out of memory here first)
            text = repr(value)[:VALUE_CHARS]
        except BaseException as exc:
            send(dict(_describe(exc), ok=False))
            continue
        send({"ok": True, "value": text, "type": type(value).__name__})


# -- the fork server -----------------------------------------------------------------------------
#
# Started by the harness with a fresh exec (never a fork of the harness), before any solution of
# the job runs, from the harness's own copy of this file (not the work directory's): it holds no
# key, no expected value and no solution. It never runs solution code itself; each request forks
# a child that becomes exactly what ``python3 -I child.py SOLUTION 3 4`` would be (its own
# session, stdin /dev/null, stdout and stderr and the two request pipes as the harness sent them,
# no other descriptor open, its own random state) and runs ``main``. A child's memory is a
# copy: nothing it does changes this process. What it could still do from outside: signal it
# (it dies, and the harness starts another), lower its resource limits or move it to other CPUs
# (it checks that before each fork and exits instead), or trace or read it (refused: this
# process is not dumpable).


def serve(control_fd):
    main_line = sys._getframe(1).f_lineno + 2  # the script calls main() two lines below, indented 8
    import _socket  # not ``socket``: its import alone costs a third of this interpreter's start
    import array
    import ctypes
    import fcntl  # noqa: F401 (used by the forked children)
    import resource

    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(4, 0, 0, 0, 0) != 0:  # PR_SET_DUMPABLE = 4
        os._exit(2)
    control = _socket.socket(fileno=control_fd)

    def reply(message):
        control.send(json.dumps(message).encode())

    def state():  # as the harness's own check: what a child can change from outside and not set back
        limits = [resource.getrlimit(getattr(resource, n)) for n in sorted(dir(resource)) if n.startswith("RLIMIT_")]
        return (limits, os.getpriority(os.PRIO_PROCESS, 0), os.sched_getscheduler(0),
                os.sched_getparam(0).sched_priority, sorted(os.sched_getaffinity(0)))

    first = state()
    while True:
        try:
            data, passed, _, _ = control.recvmsg(1 << 16, _socket.CMSG_LEN(8 * 4))
        except OSError:
            os._exit(1)
        fds = array.array("i")
        for level, kind, blob in passed:
            if level == _socket.SOL_SOCKET and kind == _socket.SCM_RIGHTS:
                fds.frombytes(blob[:len(blob) - len(blob) % fds.itemsize])
        if not data:
            os._exit(0)  # the harness is gone
        request = json.loads(data)
        if request["op"] == "fork":
            if state() != first:  # a child lowered its limits or priority, or moved it: fork nothing more
                os._exit(3)
            pid = os.fork()
            if pid == 0:
                _forked(control, fds, request["argv"], libc, main_line)
            for fd in fds:
                os.close(fd)
            reply({"pid": pid})
        elif request["op"] in ("wait", "kill"):
            pid = request["pid"]
            if request["op"] == "kill":  # then wait for it: a killed process ends at once
                for target in (os.killpg, os.kill):
                    try:
                        target(pid, 9)
                    except OSError:
                        pass
            try:
                done, status = os.waitpid(pid, 0 if request["op"] == "kill" else os.WNOHANG)
            except ChildProcessError:
                reply({"status": "gone"})
                continue
            reply({"status": os.waitstatus_to_exitcode(status) if done else None})


def _forked(control, fds, argv, libc, main_line):
    """In the new child: become a freshly started ``child.py`` and run it; never returns."""
    import fcntl

    code = 1
    try:
        os.setsid()
        control.close()
        libc.prctl(4, 1, 0, 0, 0)  # dumpable again, as after an exec: its memory holds nothing to hide
        null = os.open(os.devnull, os.O_RDONLY)
        high = [fcntl.fcntl(fd, fcntl.F_DUPFD, 5) for fd in [null] + list(fds)]  # clear of 0..4 first
        for target, fd in enumerate(high):
            os.dup2(fd, target)
        os.closerange(5, os.sysconf("SC_OPEN_MAX") if os.sysconf("SC_OPEN_MAX") > 0 else 65536)
        if "random" in sys.modules:  # not imported here; should that change, no two children share a seed
            sys.modules["random"].seed()
        sys.argv = list(argv)
        # ``main()`` as the script's own last line calls it, so that a crash of this process
        # (a solution can break what it runs on) prints the traceback an exec would print.
        top = compile("\n" * (main_line - 2) + "if 1:\n        main()\n", os.path.abspath(argv[0]), "exec")
        try:
            exec(top, globals())
            code = 0
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else 0 if exc.code is None else 1
            if not isinstance(exc.code, (int, type(None))):
                print(exc.code, file=sys.stderr)
        except BaseException as exc:
            code = 1
            exc = exc.with_traceback(exc.__traceback__.tb_next)  # from the script's line on
            sys.excepthook(type(exc), exc, exc.__traceback__)
        _flush()
    finally:
        os._exit(code)


if __name__ == "__main__":
    if sys.argv[1:2] == ["--serve"]:
        serve(int(sys.argv[2]))
    else:
        main()  # two lines below serve(): see ``serve``
