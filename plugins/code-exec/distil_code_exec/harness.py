"""Trusted grading harness: the main program of a grading run inside the sandbox.

A standalone script (standard library only); the verifier reads this file as text and hands
it to the sandbox. The solution never runs in this process.

stdin, read to the end before any untrusted code starts:
    line 1   the run's HMAC key, hex
    rest     the run as JSON: nonce, kind ("io" | "call" | "assert"), tests, setup,
             entry_point, timeout_s, import_timeout_s, rel_tol, max_output_bytes,
             solution and child (file names in the work directory)

stdout, one line per test result, one for a load error, one at the end:
    DISTIL-RESULT <hex hmac-sha256(key, payload)> <payload JSON>

Why it holds against hostile code:
- The process turns itself non-dumpable before reading stdin, so a process of the same uid
  can neither ptrace it nor open /proc/<pid>/mem or /proc/<pid>/fd/*.
- Modules load only from directories this process cannot write, never from the work directory
  the solution shares (a planted ``json.py`` would otherwise run with the key in reach).
- The solution runs in a child started by a fresh exec of the interpreter (in a batch job,
  forked from a fork server that a fresh exec started, see ``Zygote``): its memory holds no
  copy of the key or of any expected value, and only pipes to this process are open in it.
- Function calls cross the boundary as ``repr`` text and come back through a parser that
  builds literals only, so a returned object cannot steer a comparison; assert statements run
  here, with the solution's functions replaced by proxies that make those calls.
- Timeouts and crashes, and any reply that is not a literal, fail the test with an exception
  that the test's own ``except Exception`` cannot swallow.
"""

import os
import sys


def _module_dirs(path, script_dir):
    """Drop import locations the solution could write to (the work directory above all)."""
    system = tuple(os.path.realpath(p) + os.sep for p in {sys.base_prefix, sys.prefix, "/usr/lib", "/usr/local/lib"})
    kept = []
    for entry in path:
        real = os.path.realpath(entry or ".")
        if not entry or real == os.path.realpath(os.getcwd()) or real == script_dir:
            continue
        folder = real if os.path.isdir(real) else os.path.dirname(real)
        if os.access(folder, os.W_OK) and not (folder + os.sep).startswith(system):
            continue
        kept.append(entry)
    return kept


if __name__ == "__main__":  # first of all (imported by the plugin's tests, it changes nothing)
    sys.path[:] = _module_dirs(sys.path, os.path.realpath(os.path.dirname(os.path.abspath(sys.argv[0] or "."))))
    sys.dont_write_bytecode = True

import ctypes  # noqa: E402


def _make_undumpable():
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(4, 0, 0, 0, 0) != 0:  # PR_SET_DUMPABLE = 4
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_DUMPABLE, 0) failed; refusing to grade")


if __name__ == "__main__":
    _make_undumpable()

import ast  # noqa: E402
import builtins  # noqa: E402
import hashlib  # noqa: E402
import hmac  # noqa: E402
import json  # noqa: E402
import math  # noqa: E402
import resource  # noqa: E402
import select  # noqa: E402
import signal  # noqa: E402
import subprocess  # noqa: E402
import time  # noqa: E402
import traceback  # noqa: E402

MARKER = "DISTIL-RESULT"
SESSION = b"DISTIL-SESSION\n"  # stdin's first line when the job is a session (see ``serve``)
END_MARKER = "DISTIL-BATCH-END"
REPLY_LIMIT = 4 << 20  # bytes of one reply from the child
EXCERPT_CHARS = 400
VALUE_CHARS = 1000
ERROR_CHARS = 3000

# -- signed output -------------------------------------------------------------------------


class Reporter:
    def __init__(self, key, nonce):
        self._key = key
        self.nonce = nonce

    def emit(self, payload):
        # Text from the child may hold lone surrogates, which later UTF-8 logs would reject.
        payload = {k: v.encode("utf-8", "replace").decode("utf-8") if isinstance(v, str) else v for k, v in payload.items()}
        payload["nonce"] = self.nonce
        body = json.dumps(payload, sort_keys=True, separators=(",", ":"), ensure_ascii=True)
        if len(body) > 16000:  # keep every line small: drop the output excerpts first
            payload.update(stdout=_cut(payload.get("stdout"), 100), stderr=_cut(payload.get("stderr"), 100))
            payload.update(actual=_cut(payload.get("actual"), 300), error=_cut(payload.get("error"), 1500))
            body = json.dumps(payload, sort_keys=True, separators=(",", ":"), ensure_ascii=True)
        mac = hmac.new(self._key, body.encode("ascii"), hashlib.sha256).hexdigest()
        data = f"{MARKER} {mac} {body}\n".encode("ascii")
        while data:
            data = data[os.write(1, data):]


def _cut(text, limit):
    """``text`` shortened to about ``limit`` characters, keeping its head and its tail."""
    if text is None or len(text) <= limit:
        return text
    head = limit * 2 // 3
    tail = limit - head
    return f"{text[:head]}\n... [{len(text) - limit} characters cut] ...\n{text[-tail:]}"


# -- literals: the only values that cross the boundary ---------------------------------------

_NAMED = {"inf": math.inf, "nan": math.nan}


def parse_literal(text):
    """The value of a Python literal display; raises ValueError for anything else."""
    try:
        node = ast.parse(text.strip(), mode="eval").body
        return _literal(node, 0)
    except (SyntaxError, ValueError, TypeError, RecursionError, MemoryError) as exc:
        raise ValueError(str(exc) or type(exc).__name__) from None


def _literal(node, depth):
    if depth > 200:
        raise ValueError("nested too deeply")
    if isinstance(node, ast.Constant):
        return node.value
    if isinstance(node, (ast.Tuple, ast.List, ast.Set)):
        items = [_literal(e, depth + 1) for e in node.elts]
        return tuple(items) if isinstance(node, ast.Tuple) else _set_of(items) if isinstance(node, ast.Set) else items
    if isinstance(node, ast.Dict):
        if any(k is None for k in node.keys):
            raise ValueError("dict unpacking is not a literal")
        return {_literal(k, depth + 1): _literal(v, depth + 1) for k, v in zip(node.keys, node.values)}
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, (ast.USub, ast.UAdd)):
        value = _literal(node.operand, depth + 1)
        if isinstance(value, (int, float, complex)) and not isinstance(value, bool):
            return -value if isinstance(node.op, ast.USub) else value
    if isinstance(node, ast.BinOp) and isinstance(node.op, (ast.Add, ast.Sub)):
        left, right = _literal(node.left, depth + 1), _literal(node.right, depth + 1)
        if isinstance(left, (int, float)) and isinstance(right, complex) and not isinstance(left, bool):
            return left + right if isinstance(node.op, ast.Add) else left - right
    if isinstance(node, ast.Name) and node.id in _NAMED:
        return _NAMED[node.id]
    if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and not node.keywords:
        if node.func.id in ("set", "frozenset") and len(node.args) <= 1:
            items = _literal(node.args[0], depth + 1) if node.args else ()
            if isinstance(items, (set, list, tuple)):
                return _set_of(items) if node.func.id == "set" else frozenset(_set_of(items))
    raise ValueError(f"{type(node).__name__} is not a literal")


def _set_of(items):
    """``set(items)``, one item at a time. Items that all share a hash (``{0, M, 2*M, ...}`` with
    ``M = 2**61 - 1``) make building the set quadratic; as one ``set()`` call that runs in C, where
    the per-test alarm cannot interrupt it, so a solution returning such a value would outlast its
    test's time. Between the additions made here the alarm is handled as usual."""
    result = set()
    for item in items:
        result.add(item)
    return result


def to_literal_text(value, what):
    """``repr(value)`` after checking it reads back as the same literal."""
    text = repr(value)
    try:
        parse_literal(text)
    except ValueError:
        raise TypeError(
            f"cannot pass {what} {_cut(text, 80)} to the solution: only literal values "
            "(numbers, strings, bytes, None, booleans and containers of them) cross the sandbox boundary"
        ) from None
    return text


def same(actual, expected, rel_tol):
    """Equality for call tests: tuples equal lists (JSON has no tuples); floats within rel_tol."""
    if isinstance(actual, (list, tuple)) and isinstance(expected, (list, tuple)):
        return len(actual) == len(expected) and all(same(a, e, rel_tol) for a, e in zip(actual, expected))
    if isinstance(actual, dict) and isinstance(expected, dict):
        return actual.keys() == expected.keys() and all(same(actual[k], expected[k], rel_tol) for k in actual)
    numbers = (int, float)
    if rel_tol and isinstance(actual, numbers) and isinstance(expected, numbers) and float in (type(actual), type(expected)):
        return math.isclose(actual, expected, rel_tol=rel_tol, abs_tol=rel_tol)
    return bool(actual == expected)


# -- the child process -------------------------------------------------------------------------


class TestAbort(BaseException):
    """Ends a test; a BaseException, so the test's own ``except Exception`` cannot hide it."""

    def __init__(self, status, message, trace=None):
        super().__init__(message)
        self.status, self.message, self.trace = status, message, trace


class FromSolution(Exception):
    """Base of the exceptions re-raised here on behalf of the solution (they carry its traceback)."""

    trace = None


class SolutionError(FromSolution):
    """An exception of the solution whose type is not re-raised as itself."""


# Built-in exception types a test may expect the solution to raise. Anything else (notably
# StopIteration, which would end an iterator inside the test early) arrives as SolutionError.
_RERAISED = (
    ValueError, TypeError, KeyError, IndexError, LookupError, ZeroDivisionError, ArithmeticError,
    OverflowError, RuntimeError, RecursionError, NotImplementedError, AttributeError, NameError,
    UnicodeError, OSError, FileNotFoundError, MemoryError,
)
_RERAISED_BY_NAME = {cls.__name__: type(cls.__name__, (cls, FromSolution), {}) for cls in _RERAISED}


class Capture:
    """A child's stdout or stderr: the first ``limit`` bytes are kept, the rest counted."""

    def __init__(self, limit):
        self.data, self.total, self.limit, self.mark = bytearray(), 0, limit, 0

    def feed(self, chunk):
        self.total += len(chunk)
        room = self.limit - len(self.data)
        if room > 0:
            self.data += chunk[:room]

    @property
    def overflowed(self):
        return self.total > self.limit

    def text(self):
        return self.data.decode("utf-8", "replace")

    def take(self):
        """What arrived since the last take, as text."""
        new, self.mark = self.data[self.mark:], len(self.data)
        return new.decode("utf-8", "replace")


class Child:
    """A fresh interpreter (a new exec, or a fork of a ``Zygote``; never a fork of this process)
    with captured output."""

    def __init__(self, argv, env, output_limit, stdin_data=None, rpc=False, zygote=None):
        self.out, self.err = Capture(output_limit), Capture(output_limit)
        self.pending = {}  # fd -> bytes still to write
        self.rpc_in = self.rpc_out = None
        self.replies = bytearray()
        pass_fds = ()
        if rpc:
            req_r, self.rpc_out = os.pipe()
            self.rpc_in, rep_w = os.pipe()
            pass_fds = (req_r, rep_w)
            argv = argv + [str(req_r), str(rep_w)]
        try:
            # With a fork server, the same child (argv[2:], its pipes as fds 3 and 4) is forked
            # from it; should that fail, it is started with an exec as without one.
            self.proc = zygote.spawn(argv[2:-2] + ["3", "4"], pass_fds) if zygote is not None and rpc else None
            self.proc = self.proc or subprocess.Popen(
                argv, stdin=subprocess.PIPE if stdin_data is not None else subprocess.DEVNULL,
                stdout=subprocess.PIPE, stderr=subprocess.PIPE, pass_fds=pass_fds, close_fds=True,
                start_new_session=True, cwd=os.getcwd(), env=env,
            )
        except OSError:
            for fd in (self.rpc_in, self.rpc_out):
                if fd is not None:
                    os.close(fd)
            raise
        finally:
            for fd in pass_fds:
                os.close(fd)
        self.reading = {self.proc.stdout.fileno(): self.out, self.proc.stderr.fileno(): self.err}
        if rpc:
            self.reading[self.rpc_in] = None
            os.set_blocking(self.rpc_out, False)
        if stdin_data is not None:
            fd = self.proc.stdin.fileno()
            os.set_blocking(fd, False)
            self._queue(fd, stdin_data)

    def _queue(self, fd, data):
        self.pending[fd] = self.pending.get(fd, b"") + data
        if not self.pending[fd]:
            self._close_writer(fd)

    def _close_writer(self, fd):
        self.pending.pop(fd, None)
        if self.proc.stdin is not None and fd == self.proc.stdin.fileno():
            try:
                self.proc.stdin.close()
            except OSError:
                pass

    def pump(self, deadline, done):
        """Move data until ``done()`` is true (True) or the deadline passes (False)."""
        while not done():
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            poller = select.poll()
            for fd in self.reading:
                poller.register(fd, select.POLLIN)
            for fd in self.pending:
                poller.register(fd, select.POLLOUT)
            if not self.reading and not self.pending:
                time.sleep(min(left, 0.01))
                continue
            for fd, event in poller.poll(min(left, 0.05) * 1000):
                if fd in self.pending:
                    self._write_some(fd)
                elif fd in self.reading:
                    self._read_some(fd)
        return True

    def drain(self):
        """Read whatever output is already waiting, without waiting for more."""
        outputs = [fd for fd, sink in self.reading.items() if sink is not None]
        while outputs:
            poller = select.poll()
            for fd in outputs:
                poller.register(fd, select.POLLIN)
            ready = [fd for fd, _ in poller.poll(0) if fd in self.reading]
            if not ready:
                return
            for fd in ready:
                self._read_some(fd)
            outputs = [fd for fd in outputs if fd in self.reading]

    def _write_some(self, fd):
        data = self.pending[fd]
        try:
            sent = os.write(fd, data[:65536])
        except BlockingIOError:
            return
        except OSError:  # the child closed its end: what it did not read is its loss
            self.pending.pop(fd, None)
            if fd != self.rpc_out:
                self._close_writer(fd)
            return
        self.pending[fd] = data[sent:]
        if not self.pending[fd]:
            self.pending.pop(fd)
            if fd != self.rpc_out:
                self._close_writer(fd)

    def _read_some(self, fd):
        try:
            chunk = os.read(fd, 65536)
        except OSError:
            chunk = b""
        if not chunk:
            del self.reading[fd]
            return
        sink = self.reading[fd]
        if sink is None:
            self.replies += chunk
            if len(self.replies) > REPLY_LIMIT:
                raise TestAbort("invalid", f"the solution sent back more than {REPLY_LIMIT} bytes for one value")
        else:
            sink.feed(chunk)

    def request(self, message, deadline):
        """Send one request (None: just wait); the reply as a dict (untrusted content)."""
        if self.rpc_in not in self.reading and b"\n" not in self.replies:
            raise TestAbort("crashed", self.death_note())
        if message is not None:
            self.pending[self.rpc_out] = self.pending.get(self.rpc_out, b"") + json.dumps(message).encode() + b"\n"
        if not self.pump(deadline, lambda: b"\n" in self.replies or self.rpc_in not in self.reading):
            raise TestAbort("timeout", "timed out")
        if b"\n" not in self.replies:
            raise TestAbort("crashed", self.death_note())
        line, _, rest = bytes(self.replies).partition(b"\n")
        self.replies = bytearray(rest)
        self.drain()  # the child flushes its output before it replies: it is in the pipes now
        try:
            reply = json.loads(line)
            if not isinstance(reply, dict):
                raise ValueError
        except (ValueError, RecursionError):
            raise TestAbort("invalid", "the solution's process sent a malformed reply") from None
        return reply

    def death_note(self):
        self.pump(time.monotonic() + 0.2, lambda: self.proc.poll() is not None)
        code = self.proc.poll()
        if code is None:
            return "the solution's process closed its connection to the grader"
        if code < 0:
            name = signal.Signals(-code).name if -code in signal.Signals._value2member_map_ else str(-code)
            return f"the solution's process was killed by {name}"
        return f"the solution's process exited with code {code}"

    def wait_exit(self, deadline):
        """Run to completion and collect the output; False on timeout. Stops early (True) once
        stdout has overflowed: that alone fails the test."""
        if not self.pump(deadline, lambda: self.proc.poll() is not None or not self.reading or self.out.overflowed):
            return False
        if self.out.overflowed:
            return True
        # Exited, or closed its output: give the rest a moment (something it left behind
        # may hold the pipes open, which must not cost the whole timeout).
        self.pump(min(deadline, time.monotonic() + 0.2), lambda: not self.reading)
        return self.pump(deadline, lambda: self.proc.poll() is not None)

    def kill(self):
        for target in (lambda: os.killpg(self.proc.pid, signal.SIGKILL), self.proc.kill):
            try:
                target()
            except OSError:
                pass
        try:
            self.proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            pass
        for stream in (self.proc.stdin, self.proc.stdout, self.proc.stderr):
            if stream is not None:
                try:
                    stream.close()
                except OSError:
                    pass
        for fd in (self.rpc_in, self.rpc_out):
            if fd is not None:
                try:
                    os.close(fd)
                except OSError:
                    pass
        self.reading, self.pending = {}, {}



# -- the fork server of a batch --------------------------------------------------------------


class Zygote:
    """A clean interpreter (``child.py --serve``) from which a batch forks its solutions' children.

    Started with a fresh exec from this process's copy of ``child.py`` (the work directory's copy
    may have been rewritten by a solution), before the first solution of the job runs; it never
    sees the key. Each child it forks is the process an exec of ``child.py`` would give (see
    ``serve`` there), so a verdict does not depend on which way its child was started. One that
    a rollout got at (killed, or changed its limits, priority or CPUs: then it refuses to fork
    and exits) is ``broken``: that rollout's next child is started with an exec, and the batch
    starts a new server for the next rollout.
    """

    REPLY_S = 5.0  # it answers at once; one that does not within this is broken

    BOOT = "import sys; exec(compile(sys.argv.pop(), sys.argv.pop(), 'exec'))"

    def __init__(self, source, env, path):
        """``source``: ``child.py``'s text; ``path``: where a run's copy lies (its tracebacks name it)."""
        import _socket  # not ``socket``, whose import costs more than a fork server's round trips

        mine, theirs = _socket.socketpair(_socket.AF_UNIX, _socket.SOCK_SEQPACKET)
        try:
            self.proc = subprocess.Popen(
                [sys.executable, "-I", "-c", self.BOOT, "--serve", str(theirs.fileno()), path, source],
                stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                pass_fds=(theirs.fileno(),), close_fds=True, start_new_session=True, cwd=os.getcwd(), env=env,
            )
        finally:
            theirs.close()
        self.control, self.pid, self.broken = mine, self.proc.pid, False

    def _ask(self, message, fds=()):
        import _socket
        import array

        if self.broken:
            raise OSError("the fork server is gone")
        try:
            self.control.settimeout(self.REPLY_S)
            rights = [(_socket.SOL_SOCKET, _socket.SCM_RIGHTS, array.array("i", fds))] if fds else []
            self.control.sendmsg([json.dumps(message).encode()], rights)
            reply = json.loads(self.control.recv(1 << 16) or b"null")
            if not isinstance(reply, dict):
                raise ValueError("no reply")
            return reply
        except (OSError, ValueError) as exc:
            self.close()
            raise OSError(f"the fork server failed: {exc}") from None

    def spawn(self, argv, rpc_fds):
        """A ``ForkedProc`` running ``child.py`` with ``argv``; None if the server cannot fork."""
        out_r, out_w = os.pipe()
        err_r, err_w = os.pipe()
        try:
            pid = self._ask({"op": "fork", "argv": argv}, [out_w, err_w, *rpc_fds]).get("pid")
        except OSError:
            pid = None
        finally:
            os.close(out_w)
            os.close(err_w)
        if not isinstance(pid, int) or pid <= 0:
            os.close(out_r)
            os.close(err_r)
            return None
        return ForkedProc(self, pid, out_r, err_r)

    def reap(self, pid, kill=False):
        """The exit code of a child that ended (negative: killed by that signal), else None;
        ``kill``: kill it first, and wait for it."""
        try:
            status = self._ask({"op": "kill" if kill else "wait", "pid": pid}).get("status")
        except OSError:  # the server died: its children came to this process (the subreaper)
            try:
                done, status = os.waitpid(pid, os.WNOHANG)
                return os.waitstatus_to_exitcode(status) if done else None
            except ChildProcessError:
                return None if os.path.exists(f"/proc/{pid}") else -signal.SIGKILL
        return -signal.SIGKILL if status == "gone" else status

    def close(self):
        self.broken = True
        try:
            self.proc.kill()
            self.proc.wait(timeout=5)
        except (OSError, subprocess.TimeoutExpired):
            pass
        self.control.close()


class ForkedProc:
    """What ``Child`` needs of a ``subprocess.Popen``, for a child forked by a ``Zygote``."""

    def __init__(self, zygote, pid, out_r, err_r):
        self.zygote, self.pid, self.returncode, self.stdin = zygote, pid, None, None
        self.stdout, self.stderr = os.fdopen(out_r, "rb", buffering=0), os.fdopen(err_r, "rb", buffering=0)

    def poll(self):
        if self.returncode is None:
            self.returncode = self.zygote.reap(self.pid)
        return self.returncode

    def wait(self, timeout):
        end = time.monotonic() + timeout
        while self.poll() is None:
            if time.monotonic() > end:
                raise subprocess.TimeoutExpired(str(self.pid), timeout)
            time.sleep(0.001)
        return self.returncode

    def kill(self):
        if self.returncode is None:  # not reaped yet (only on request): the pid is still its own
            self.returncode = self.zygote.reap(self.pid, kill=True)
            if self.returncode is None:
                os.kill(self.pid, signal.SIGKILL)


class Session:
    """A child serving the solution's functions; reused across tests until one goes wrong."""

    def __init__(self, grader):
        self.grader = grader
        self.child = Child(
            [sys.executable, "-I", grader.child_script, grader.solution], grader.env, grader.output_limit, rpc=True,
            zygote=grader.zygote,
        )
        grader.forked += isinstance(self.child.proc, ForkedProc)
        self.names = {}

    def wait_ready(self, deadline):
        try:
            reply = self.child.request(None, deadline)
        except TestAbort as abort:
            if abort.status == "timeout":
                raise TestAbort("timeout", f"the code did not finish loading within {self.grader.import_timeout:g} s") from None
            raise TestAbort("error", f"{abort.message} while the code was loading") from None
        if reply.get("ready") is True:
            return
        kind, message = _text(reply.get("exc_type")), _text(reply.get("message"))
        raise TestAbort("error", f"{kind}: {message}" if message else kind, _text(reply.get("traceback")))

    def _request(self, message, deadline):
        try:
            return self.child.request(message, deadline)
        except TestAbort as abort:
            self.grader.aborted = abort  # remembered even if the test's code catches it
            raise

    def call(self, name, args, kwargs, deadline):
        message = {
            "op": "call", "name": name,
            "args": to_literal_text(tuple(args), "the arguments"),
            "kwargs": to_literal_text(dict(kwargs), "the keyword arguments"),
        }
        return self._value(f"{name}(...)", self._request(message, deadline))

    def bind(self, names, deadline):
        """Test-namespace entries for the solution's ``names``: proxies for callables, values for
        literals; a name the solution does not define stays unbound."""
        unknown = [n for n in names if n not in self.names]
        if unknown:
            reply = self._request({"op": "names", "names": unknown}, deadline)
            found = reply.get("names") if isinstance(reply.get("names"), dict) else {}
            for name in unknown:
                entry = found.get(name)
                if entry == "callable":
                    self.names[name] = Remote(self, name)
                elif isinstance(entry, dict):
                    self.names[name] = _Value(self._value(name, dict(entry, ok=True)))
                else:
                    self.names[name] = None
        return {n: (e.value if isinstance(e, _Value) else e) for n in names for e in [self.names[n]] if e is not None}

    def _value(self, what, reply):
        if reply.get("ok") is True:
            text = reply.get("value")
            try:
                return parse_literal(text if isinstance(text, str) else "")
            except ValueError:
                kind = _text(reply.get("type"))[:60] or "non-literal"
                self.grader.aborted = TestAbort(
                    "invalid",
                    f"{what} gave a {kind} value ({_cut(_text(text), 120)}); only literal values "
                    "(numbers, strings, bytes, None, booleans and containers of them) can be checked",
                )
                raise self.grader.aborted from None
        exc_type = _text(reply.get("exc_type"))[:100] or "Exception"
        cls = _RERAISED_BY_NAME.get(exc_type, SolutionError)
        exc = cls(_cut(_text(reply.get("message")), ERROR_CHARS))
        exc.trace = _text(reply.get("traceback")) or f"{exc_type}: {exc}"
        raise exc


class _Value:
    def __init__(self, value):
        self.value = value


class Remote:
    """Stands for one function of the solution in a test's namespace."""

    def __init__(self, session, name):
        self._session, self._name = session, name

    def __call__(self, *args, **kwargs):
        return self._session.call(self._name, args, kwargs, self._session.grader.deadline)

    def __repr__(self):
        return f"<solution function {self._name}>"


def _text(value):
    return value if isinstance(value, str) else "" if value is None else repr(value)


def _bound_names(tree):
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Name) and not isinstance(node.ctx, ast.Load):
            names.add(node.id)
        elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            names.add(node.name)
        elif isinstance(node, ast.arg):
            names.add(node.arg)
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            names.update((a.asname or a.name).split(".")[0] for a in node.names)
        elif isinstance(node, ast.ExceptHandler) and node.name:
            names.add(node.name)
    return names


def _reaches_no_solution(builtin_names):
    """Why a test that uses none of the solution's names cannot grade it."""
    if not builtin_names:
        return "the problem's test uses no name of the solution, so it passes or fails alike for every solution"
    names = ", ".join(builtin_names[:5])
    return (f"the problem's test calls no function of the solution: in a test, {names} always "
            f"mean{'s' if len(builtin_names) == 1 else ''} Python's builtin{'s' if len(builtin_names) > 1 else ''}, "
            "never the solution's (so that a solution cannot swap in its own), and the test passes or "
            "fails alike for every solution; the problem must name its function otherwise, or test it "
            "with calls and an entry_point")


def _normalize_lines(text):
    return [line.strip() for line in text.strip().splitlines()]


def _traceback_in(stderr):
    start = stderr.rfind("Traceback (most recent call last):")
    return stderr[start:] if start >= 0 else "\n".join(stderr.strip().splitlines()[-20:])


def child_env(work):
    """The environment every process of the solution starts with."""
    return {"PATH": "/usr/local/bin:/usr/bin:/bin", "LANG": "C.UTF-8", "HOME": work}


class Grader:
    def __init__(self, run, reporter, zygote=None):
        self.run, self.reporter, self.zygote = run, reporter, zygote
        self.forked = 0  # children forked from the zygote (the rest were started with an exec)
        self.kind, self.tests = run["kind"], run["tests"]
        self.timeout = float(run["timeout_s"])
        self.import_timeout = float(run["import_timeout_s"])
        self.output_limit = int(run["max_output_bytes"])
        self.rel_tol = float(run.get("rel_tol") or 0.0)
        work = os.getcwd()
        self.solution = os.path.join(work, run["solution"])
        self.child_script = os.path.join(work, run["child"])
        self.env = child_env(work)
        self.session = None
        self.broken = None  # why the remaining tests cannot run
        self.deadline = 0.0
        self.aborted = None  # the TestAbort of the current test, even if the test swallowed it
        # The alarm stops a test whose own code runs away. The solution can send these signals
        # too: each ends the current test as failed, however the test's code catches it.
        for number in (signal.SIGALRM, signal.SIGINT):
            signal.signal(number, self._interrupted)

    def _interrupted(self, signum, frame):
        self.aborted = TestAbort("timeout" if signum == signal.SIGALRM else "crashed", "interrupted by a signal")
        raise self.aborted

    def grade(self):
        self.began = time.monotonic()
        with open(self.solution, encoding="utf-8", errors="replace") as fh:
            source = fh.read()
        problem = self.compile_problem(source) or self.setup_problem()
        if problem is None and self.kind != "io":
            problem = self.start_session()
        if problem is not None:
            stage, message, trace = problem
            self.reporter.emit({"type": "error", "stage": stage, "message": message, "traceback": _cut(trace, ERROR_CHARS)})
        for index, test in enumerate(self.tests):
            if problem is not None:
                result = {"status": "not_run", "error": f"not run: {problem[1]}"}
            else:
                result = self.run_test(index, test)
            self.reporter.emit(dict(result, type="test", index=index, passed=result["status"] == "passed"))
        self.drop_session()
        self.reporter.emit({"type": "done", "tests": len(self.tests), "seconds": round(time.monotonic() - self.began, 4),
                           "forked": self.forked})

    def drop_session(self):
        if self.session is not None:
            self.session.child.kill()
            self.session = None

    def compile_problem(self, source):
        try:
            compile(source, "solution.py", "exec")
        except SyntaxError as exc:
            lines = source.splitlines()
            if exc.lineno and 0 < exc.lineno <= len(lines):  # not the file on disk: it may differ
                exc.text = lines[exc.lineno - 1] + "\n"
            trace = "".join(traceback.format_exception_only(type(exc), exc)).rstrip()
            return ("compile", f"{type(exc).__name__}: {exc.msg} (line {exc.lineno})", trace)
        except (ValueError, RecursionError, MemoryError, OverflowError) as exc:
            return ("compile", f"{type(exc).__name__}: {exc}", f"{type(exc).__name__}: {exc}")
        return None

    def setup_problem(self):
        self.setup_ns = {"__name__": "distil_test", "__builtins__": builtins}
        try:
            exec(compile(self.run.get("setup") or "", "<setup>", "exec"), self.setup_ns)
        except Exception as exc:
            return ("setup", f"the problem's setup code failed: {type(exc).__name__}: {exc}", traceback.format_exc())
        return None

    def start_session(self):
        """Load the solution in a new child; (stage, message, traceback) if that fails."""
        self.session = None
        try:
            session = Session(self)
        except OSError as exc:
            return ("import", f"could not start the solution's process: {exc}", "")
        try:
            session.wait_ready(time.monotonic() + self.import_timeout)
        except TestAbort as abort:
            session.child.kill()
            stderr = session.child.err.take().strip()
            trace = abort.trace or (_traceback_in(stderr) if stderr else "")
            return ("timeout" if abort.status == "timeout" else "import", abort.message, trace)
        self.session = session
        return None

    def run_test(self, index, test):
        started = time.monotonic()
        self.deadline = started + self.timeout
        self.aborted = None
        signal.setitimer(signal.ITIMER_REAL, self.timeout + 1.0)
        try:
            result = self.io_test(test) if self.kind == "io" else self.rpc_test(index, test)
        except TestAbort as abort:  # the alarm: the test ran well past its time
            result = {"status": abort.status, "error": abort.message}
            self.drop_session()
        finally:
            signal.setitimer(signal.ITIMER_REAL, 0)
        if self.aborted is not None and result["status"] == "passed":
            result = {"status": self.aborted.status, "error": self.aborted.message}
        result["seconds"] = round(time.monotonic() - started, 4)
        for field, limit in (("actual", VALUE_CHARS), ("expected", VALUE_CHARS), ("error", ERROR_CHARS),
                             ("stdout", EXCERPT_CHARS), ("stderr", EXCERPT_CHARS)):
            if field in result:
                result[field] = _cut(result[field], limit)
        return result

    # -- whole programs ---------------------------------------------------------------------

    def io_test(self, test):
        try:
            child = Child([sys.executable, "-I", self.solution], self.env, self.output_limit,
                          stdin_data=test["stdin"].encode("utf-8"))
        except OSError as exc:
            return {"status": "error", "error": f"could not start the program: {exc}"}
        try:
            finished = child.wait_exit(self.deadline)
        except TestAbort:
            finished = False
        overflowed = child.out.overflowed
        note = child.death_note() if finished and not overflowed else ""
        code = child.proc.poll()
        child.kill()
        stdout, stderr = child.out.text(), child.err.text().replace(f'"{self.solution}"', '"solution.py"')
        result = {"actual": stdout, "stdout": stdout, "stderr": stderr}
        if overflowed:
            return dict(result, status="failed", error=f"printed more than {self.output_limit} bytes")
        if not finished:
            return dict(result, status="timeout", error=f"timed out after {self.timeout:g} s")
        if code != 0:
            trace = _traceback_in(stderr) if stderr.strip() else note
            return dict(result, status="error", error=trace or note)
        passed = _normalize_lines(stdout) == _normalize_lines(test["stdout"])
        return dict(result, status="passed" if passed else "failed")

    # -- function calls and asserts ------------------------------------------------------------

    def rpc_test(self, index, test):
        if self.broken is not None:
            return {"status": "not_run", "error": f"not run: {self.broken}"}
        if self.session is None:
            # Loading the code again (after a test timed out or crashed) is not this test's
            # doing: it gets the load's own limit, as the first load did, and the test its full
            # time once the code is loaded.
            signal.setitimer(signal.ITIMER_REAL, self.import_timeout + 1.0)
            problem = self.start_session()
            if problem is not None:  # it loaded before: do not pay the load timeout again
                self.broken = f"the code failed to load again after an earlier test: {problem[1]}"
                return {"status": "timeout" if problem[0] == "timeout" else "error",
                        "error": f"{problem[1]}\n{problem[2]}".strip()}
            self.deadline = time.monotonic() + self.timeout
            signal.setitimer(signal.ITIMER_REAL, self.timeout + 1.0)
        session = self.session
        try:
            if self.kind == "call":
                result = self.call_test(session, test)
            else:
                result = self.assert_test(session, index, test)
        except TestAbort as abort:
            result = {"status": abort.status, "error": abort.message}
        except AssertionError as exc:
            result = {"status": "failed", "error": f"AssertionError: {exc}" if str(exc) else "assertion failed"}
        except FromSolution as exc:
            result = {"status": "error", "error": exc.trace}
        except Exception as exc:
            result = {"status": "error", "error": self.describe_test_error(exc, index)}
        if self.aborted is not None:  # the test caught it, but the test cannot pass
            result = {"status": self.aborted.status, "error": self.aborted.message}
        if result["status"] in ("timeout", "crashed") or session.child.rpc_in not in session.child.reading:
            self.drop_session()
        if result["status"] == "timeout":
            result["error"] = f"timed out after {self.timeout:g} s"
        result["stdout"] = session.child.out.take()
        result["stderr"] = session.child.err.take()
        return result

    def call_test(self, session, test):
        entry = self.run["entry_point"]
        value = session.call(entry, test.get("args") or [], test.get("kwargs") or {}, self.deadline)
        status = "passed" if same(value, test["expected"], self.rel_tol) else "failed"
        return {"status": status, "actual": repr(value)}

    def assert_test(self, session, index, source):
        """Run one assert test here, with the solution's names it uses bound to proxies.

        Only names that are neither bound by the test itself, nor defined by the setup, nor
        builtins come from the solution. A builtin name in a test is always the real builtin,
        whatever the solution binds to it: with ``len = lambda x: 2`` or ``def sorted(x): ...``
        in the solution, ``assert len(f(x)) == 2`` still checks ``f`` with Python's ``len``
        (the solution's own functions, in its own process, still see what it defined).

        The other side of that rule: a test that uses no name of the solution at all, such as
        ``assert pow(2, 3) == 8`` for a problem that asks for a function named ``pow``, checks
        Python's ``pow`` and would pass for every solution, even one that defines nothing. Such
        a test is the problem's mistake; it is an error for every solution, with a message
        saying why, rather than a free pass."""
        tree = ast.parse(source)
        loaded = {n.id for n in ast.walk(tree) if isinstance(n, ast.Name) and isinstance(n.ctx, ast.Load)}
        free = loaded - _bound_names(tree) - set(self.setup_ns)
        wanted = sorted(free - set(dir(builtins)))
        if not wanted:
            return {"status": "error", "error": _reaches_no_solution(sorted(free))}
        namespace = dict(self.setup_ns)
        namespace.update(session.bind(wanted, self.deadline))
        self.missing = [n for n in wanted if n not in namespace]
        where = f"<test {index}>"
        statement = tree.body[0] if len(tree.body) == 1 else None
        check = getattr(statement, "test", None) if isinstance(statement, ast.Assert) else None
        if isinstance(check, ast.Compare) and len(check.ops) == 1 and isinstance(check.ops[0], ast.Eq):
            left = eval(compile(ast.Expression(check.left), where, "eval"), namespace)
            right = eval(compile(ast.Expression(check.comparators[0]), where, "eval"), namespace)
            if self.aborted is None and not bool(left == right):
                return {"status": "failed", "actual": repr(left), "expected": repr(right)}
            return {"status": "passed", "actual": repr(left)}
        exec(compile(tree, where, "exec"), namespace)
        return {"status": "passed"}

    def describe_test_error(self, exc, index):
        if isinstance(exc, NameError) and getattr(exc, "name", None) in getattr(self, "missing", ()):
            return f"NameError: the solution does not define {exc.name!r}"
        frames = [f for f in traceback.extract_tb(exc.__traceback__) if f.filename == f"<test {index}>"]
        where = f" (test line {frames[-1].lineno})" if frames else ""
        return "".join(traceback.format_exception_only(type(exc), exc)).strip() + where


# -- several rollouts in one sandbox job ---------------------------------------------------------
#
# A batch grades its runs one after another, each exactly as a run of its own would be graded
# (its own nonce, a new child, the same per-test limits; the children of call and assert runs are
# forked from the batch's ``Zygote`` rather than started with an exec). What one run could leave for the
# next is checked before the next starts: processes that outlived it (this process is their
# subreaper, so none can hide by double-forking; one whose main thread ended while another of its
# threads runs counts too), any change to the writable places and System V
# IPC, to this process's own resource limits, priority, scheduling and CPUs (a process of the same
# uid may change them from outside, and every later child inherits them), and to the kernel keys
# of this uid, since the batch began (see ``Baseline``). If anything is left, the batch stops
# there: the runs not yet graded get no result, and the verifier grades each of them in a sandbox
# job of its own.

WATCHED = ("/tmp", "/var/tmp", "/dev/shm", "/dev/mqueue")
WATCH_LIMIT = 2000  # entries; a busier place is never called unchanged


def _surroundings(work):
    """What a run could leave behind for the next one (None: too much to compare). Outside the
    work directory only what this uid owns counts: a shared /tmp (the process backend's) changes
    under others' hands, and what a run creates there is its own.

    Each entry's change time (ctime) is compared, not only its modification time: a run can
    rewrite a file (this harness's own ``main.py`` included) and set its modification time back,
    or give it an extended attribute, and either moves the change time, which cannot be set
    back. The work directory and the watched places themselves change whenever a run's files
    come and go, so for them the extended attributes are compared instead (a user attribute on
    the work directory would carry data to the next run), with the work directory's mode."""
    seen, uid = [], os.getuid()
    for top in (work,) + WATCHED:
        if not os.path.isdir(top):
            continue
        seen.append((top, _xattrs(top)))
        for folder, dirs, files in os.walk(top):
            for name in dirs + files:
                path = os.path.join(folder, name)
                if path == work:  # the work directory inside a watched place: walked on its own
                    continue
                try:
                    st = os.lstat(path)
                except OSError:
                    return None
                if top == work or st.st_uid == uid:
                    seen.append((path, st.st_mode, st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino))
                if len(seen) > WATCH_LIMIT:
                    return None
            try:
                st = os.lstat(folder)
            except OSError:
                return None
            if folder == work:
                seen.append((folder, st.st_mode))
            elif st.st_uid == uid:
                seen.append((folder, st.st_mode, st.st_mtime_ns, st.st_ctime_ns))
    for table in ("shm", "msg", "sem"):
        try:
            with open(f"/proc/sysvipc/{table}", encoding="ascii", errors="replace") as fh:
                seen.append((table, fh.read()))
        except OSError:
            pass
    return seen


def _xattrs(path):
    """The extended attributes of ``path`` with their values (none where it has no support for them)."""
    try:
        return tuple(sorted((name, os.getxattr(path, name, follow_symlinks=False))
                            for name in os.listxattr(path, follow_symlinks=False)))
    except OSError:
        return ()


def _own_state():
    """What a process of this uid can change about this one from outside, for every child it
    starts later to inherit: its resource limits (``prlimit``), priority (``setpriority``),
    scheduling policy and CPUs (``sched_setaffinity``). None of it can be set back without
    privileges (a lowered hard limit or a raised nice value stays), so it is compared."""
    limits = tuple(resource.getrlimit(getattr(resource, n)) for n in sorted(dir(resource)) if n.startswith("RLIMIT_"))
    return (limits, os.getpriority(os.PRIO_PROCESS, 0), os.sched_getscheduler(0), os.sched_getparam(0).sched_priority,
            tuple(sorted(os.sched_getaffinity(0))))


def _keyrings():
    """The kernel keys of this uid that it can see, as /proc/keys shows them (flags, expiry,
    permissions, what a keyring holds), without the usage counts. Keys belong to the uid, not
    to a process: one a run adds to its user, session or persistent keyring outlives the run,
    for every later run of the uid to read.

    Left out: session keyrings themselves (``_ses``), and the uid's key counts. Where jobs run
    under the caller's own uid (bwrap without root), every job that starts beside this one
    joins a new session keyring of that uid; counting those would end a neighbour's batch for
    nothing. A key a run adds to any keyring this one reaches still shows as a line of its own."""
    uid, found = str(os.getuid()), []
    try:
        with open("/proc/keys", encoding="ascii", errors="replace") as fh:
            lines = fh.read().splitlines()
    except OSError:
        return found
    for line in lines:
        fields = line.split()
        if len(fields) > 8 and fields[5] == uid and not (fields[7] == "keyring" and fields[8].startswith("_ses")):
            found.append((*fields[:2], *fields[3:]))
    return sorted(found)


KEYS_SETTLE_S = 2.0  # keys the run's processes held die with them, freed by the kernel shortly after


class Baseline:
    """How this sandbox was when grading began; a run must leave it so for the next one."""

    def __init__(self, work):
        self.work = work
        self.surroundings = _surroundings(work)
        self.own = _own_state()
        self.keys = _keyrings()

    def changed(self):
        """What the last run left changed (a reason, for the log), or None."""
        now = _surroundings(self.work)
        if self.surroundings is None or now != self.surroundings:
            changed = sorted({e[0] for e in set(now or []) ^ set(self.surroundings or [])})[:3]
            return f"the run changed the writable places or IPC {changed}"
        if _own_state() != self.own:
            return "the run changed the grader's resource limits, priority, scheduling or CPUs"
        end, pause = time.monotonic() + KEYS_SETTLE_S, 0.001
        while _keyrings() != self.keys:
            if time.monotonic() >= end:
                return "the run left keys in the kernel's keyrings"
            time.sleep(pause)
            pause = min(pause * 2, 0.05)
        return None


def _processes():
    """{pid: parent pid} of every live process in /proc. A process whose main thread has ended
    (a raw ``exit`` system call, not ``exit_group``) while another of its threads runs shows
    ``Z`` in ``/proc/<pid>/stat`` like a dead one: it counts as live while a thread of it does."""
    found = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            fields = _stat_fields(f"/proc/{entry}/stat")
            if fields and (fields[0] not in ("Z", "X") or _has_live_thread(entry)):
                found[int(entry)] = int(fields[1])
    return found


def _stat_fields(path):
    """The fields of a /proc ``stat`` file after the command name (state first), or []."""
    try:
        with open(path, encoding="ascii", errors="replace") as fh:
            return fh.read().rpartition(")")[2].split()
    except OSError:
        return []


def _has_live_thread(pid):
    try:
        threads = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return False
    return any(_stat_fields(f"/proc/{pid}/task/{tid}/stat")[:1] not in ([], ["Z"], ["X"]) for tid in threads)


def _descendants():
    """Live processes below this one (orphans come back to it: it is their subreaper). None can
    leave the tree: ``clone(CLONE_PARENT)`` gives the new process its caller's parent, which is
    in the tree too."""
    while True:  # reap what already died
        try:
            pid, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            break
        if pid == 0:
            break
    parents = _processes()
    found, frontier = set(), {os.getpid()}
    while frontier:
        frontier = {pid for pid, parent in parents.items() if parent in frontier and pid not in found}
        found |= frontier
    return found


def _place(path, text):
    """A fresh file the run reads: whatever an earlier run left under that name is gone."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o644)
    with os.fdopen(fd, "w", encoding="utf-8", errors="surrogateescape") as fh:
        fh.write(text)


class BatchGrader:
    """Grades runs one after another in this sandbox, each as a job of its own would be: the
    places a run could write are compared with how they were before the first run, and no
    process may be left. A batch job grades one batch; a session, one batch per request."""

    def __init__(self, child_source):
        self.work = os.getcwd()
        self.child_source = child_source
        libc = ctypes.CDLL(None, use_errno=True)
        self.subreaper = libc.prctl(36, 1, 0, 0, 0) == 0  # PR_SET_CHILD_SUBREAPER: orphans come here
        self.baseline = Baseline(self.work)
        self.zygote = None

    def grade(self, runs, key):
        """Grade ``runs``; why grading in this sandbox must stop after them, or None."""
        if not self.subreaper:  # left processes could not be found: one run, then stop
            runs = runs[:1]
        for run in runs:
            if self.zygote is None and run["kind"] != "io" and len(runs) > 1:
                # started before this run's solution exists (a later restart: once none is left)
                self.zygote = _start_zygote(self.child_source, self.work, os.path.join(self.work, run["child"]))
            reason = _grade_one(run, self.child_source, key, self.baseline, self.zygote)
            if reason:
                return reason
            if self.zygote is not None and self.zygote.broken:  # gone, or it found itself changed
                self.zygote = None
        return None if self.subreaper else "no subreaper"

    def close(self):
        if self.zygote is not None:
            self.zygote.close()
            self.zygote = None


def grade_batch(batch, key):
    grader = BatchGrader(batch["child_source"])
    try:
        reason = grader.grade(batch["runs"], key)
        if reason:
            _stop(reason)
    finally:
        grader.close()


def serve(requests):
    """A session: the session's secret (hex) on the first line read from ``requests`` (a file of
    this process alone), then one batch per line, ``<hex hmac-sha256(secret, body)> <body JSON>``,
    each answered with its results and then ``END_MARKER <the batch's end token> <"ok" | "stop">``.
    The session ends at the end of its input, at a request not signed with the secret, or after a
    batch that leaves something behind.

    Why the signature and the token: were a solution's process of this uid to reach this job's
    stdin and stdout (through a sandbox init that held them too; bwrap's does not), it could
    still not make use of them. The secret and each batch (its key
    and end token) are read before any solution runs and no solution's process outlives its run,
    so a solution can neither write a request this process would take, nor end a batch early
    (the host would send the next one, key included, while that process still runs)."""
    grader = None
    secret = bytes.fromhex(requests.readline().decode("ascii").strip())
    try:
        for line in requests:
            mac, _, body = line.rstrip(b"\n").partition(b" ")
            if not secret or not hmac.compare_digest(mac, hmac.new(secret, body, hashlib.sha256).hexdigest().encode()):
                return _stop("a request not signed with the session's secret")
            request = json.loads(body)
            if grader is None:
                grader = BatchGrader(request["child_source"])
            reason = grader.grade(request["runs"], bytes.fromhex(request["key"]))
            _say(f"{END_MARKER} {request['end']} {'ok' if not reason else 'stop'}")
            if reason:
                return _stop(reason)
    finally:
        if grader is not None:
            grader.close()


def _start_zygote(source, work, path):
    try:
        return Zygote(source, child_env(work), path)
    except OSError as exc:
        print(f"distil-batch: no fork server ({exc}); each child is started with an exec", file=sys.stderr)
        return None


def _say(line):
    data = (line + "\n").encode("ascii")
    while data:
        data = data[os.write(1, data):]


def _grade_one(run, child_source, key, baseline, zygote):
    """Grade one run of a batch; why the batch must stop after it, or None."""
    work = baseline.work
    solution, child = os.path.join(work, run["solution"]), os.path.join(work, run["child"])
    _place(solution, run.pop("source"))
    _place(child, child_source)
    Grader(run, Reporter(key, run["nonce"]), zygote).grade()
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        os.unlink(solution)
        os.unlink(child)
    except OSError:
        return "the run's files could not be removed"
    left = _descendants() - ({zygote.pid} if zygote is not None else set())
    if left:
        for pid in left:
            try:
                os.kill(pid, signal.SIGKILL)
            except OSError:
                pass
        return f"the run left {len(left)} processes running"
    return baseline.changed()


def _stop(reason):
    """Say on stderr (for whoever debugs the grading) why the batch stopped early."""
    print(f"distil-batch: stopped after a run: {reason}", file=sys.stderr, flush=True)


def main():
    first = _first_line()  # unbuffered: in a session, nothing past it may be read yet
    if first == SESSION:
        # the requests keep coming on stdin: read them from a descriptor no child inherits
        requests = os.fdopen(os.dup(0), "rb", buffering=1 << 16)
        _stdin_from_devnull()
        sys.stdout = sys.stderr
        if hasattr(sys, "set_int_max_str_digits"):
            sys.set_int_max_str_digits(100_000)
        return serve(requests)
    raw = first + sys.stdin.buffer.read()
    _stdin_from_devnull()
    key_line, _, body = raw.partition(b"\n")
    key = bytes.fromhex(key_line.decode("ascii").strip())
    if hasattr(sys, "set_int_max_str_digits"):
        sys.set_int_max_str_digits(100_000)
    run = json.loads(body)
    del raw, body
    sys.stdout = sys.stderr  # only Reporter.emit writes to fd 1; a print in a test goes to stderr
    if "runs" in run:
        grade_batch(run, key)
    else:
        Grader(run, Reporter(key, run["nonce"])).grade()


def _first_line():
    line = b""
    while not line.endswith(b"\n") and len(line) <= len(SESSION):
        byte = os.read(0, 1)
        if not byte:
            break
        line += byte
    return line


def _stdin_from_devnull():
    devnull = os.open(os.devnull, os.O_RDONLY)
    os.dup2(devnull, 0)
    os.close(devnull)


if __name__ == "__main__":
    main()
