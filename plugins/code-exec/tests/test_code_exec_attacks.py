"""Code that tries to fake a pass is graded as a failure, on bwrap and on the process backend.

Every attack solves ``secret(x)`` wrongly; the expected values (73910558, 73910559) appear
nowhere the code under test can read, so a pass would mean the attack worked.
"""

import pytest
from code_exec_testlib import grade, problem, rollout, verifier

from distil_code_exec import CodeExecVerifier
from distil_code_exec.verifier import read_signed

ASSERTS = {"asserts": ["assert secret(5) == 73910558", "assert secret(6) == 73910559"], "timeout_s": 1}
CALLS = {"entry_point": "secret", "calls": [{"args": [5], "expected": 73910558}, {"args": [6], "expected": 73910559}], "timeout_s": 1}
IO = {"io": [{"stdin": "5\n", "stdout": "73910558"}, {"stdin": "6\n", "stdout": "73910559"}], "timeout_s": 1}
STYLES = {"asserts": ASSERTS, "calls": CALLS, "io": IO}

WRONG = "\ndef secret(x):\n    return 0\nif __name__ == '__main__':\n    print(0)\n"

EXIT_AT_IMPORT = "import os\nos._exit(0)\n" + WRONG

FAKE_RESULT_LINES = """
import hashlib, json, os, sys
lines = []
for index in range(4):
    for nonce in ("0" * 32, "", None):
        body = json.dumps({"index": index, "nonce": nonce, "passed": True, "status": "passed", "type": "test"},
                          sort_keys=True, separators=(",", ":"))
        for mac in ("0" * 64, hashlib.sha256(body.encode()).hexdigest()):
            lines.append(f"DISTIL-RESULT {mac} {body}\\n")
lines += ["DISTIL-RESULT ok\\n", "PASSED 2/2\\n", "All tests passed\\n", '{"passed": true, "score": 1.0}\\n']
text = "".join(lines)
for write in (sys.stdout.write, sys.stderr.write, sys.__stdout__.write, lambda t: os.write(1, t.encode())):
    write(text)
sys.stdout.flush()
for path in ("/dev/stdout", "/proc/self/fd/1", f"/proc/{os.getppid()}/fd/1", "/dev/tty"):
    try:
        with open(path, "w") as out:
            out.write(text)
    except OSError:
        pass
""" + WRONG

MONKEYPATCH_BUILTINS = """
import builtins, sys, unittest
class Never(Exception):
    pass
builtins.AssertionError = Never
builtins.isinstance = lambda *args: True
builtins.print = lambda *args, **kwargs: None
unittest.TestCase.assertEqual = lambda *args, **kwargs: None
sys.exit = lambda *args: None
""" + WRONG

ALWAYS_EQUAL = """
class Anything:
    def __eq__(self, other):
        return True
    def __ne__(self, other):
        return False
    __hash__ = object.__hash__
def secret(x):
    return Anything()
"""

REPR_IS_CODE = """
class Sneaky:
    def __repr__(self):
        return "__import__('builtins').True or 73910558"
def secret(x):
    return Sneaky()
"""

EQUAL_SUBCLASS = """
class Eq(int):
    def __eq__(self, other):
        return True
def secret(x):
    return Eq(0)
"""

READ_FILES_FOR_EXPECTED = r"""
import os, re
PATTERNS = [rb"secret\(%d\)\s*==\s*(\d+)", rb'"args":\s*\[%d\],\s*"expected":\s*(\d+)',
            rb'"stdin":\s*"%d\\n",\s*"stdout":\s*"(\d+)"']
def candidates():
    for root, depth in ((os.getcwd(), 9), ("/tmp", 1), ("/dev/shm", 1), ("/var/tmp", 1)):
        for folder, _, files in os.walk(root):
            if folder.count("/") - root.count("/") < depth:
                for name in files:
                    yield os.path.join(folder, name)
    for pid in os.listdir("/proc"):
        if pid.isdigit() or pid == "self":
            for name in ("cmdline", "environ", "maps"):
                yield f"/proc/{pid}/{name}"
            try:
                for fd in os.listdir(f"/proc/{pid}/fd"):
                    yield f"/proc/{pid}/fd/{fd}"
            except OSError:
                pass
def read(path):
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)  # a FIFO or a pipe must not block the scan
    try:
        return os.read(fd, 4 << 20)
    finally:
        os.close(fd)
def find(x):
    for path in candidates():
        try:
            data = read(path)
        except OSError:
            continue
        for pattern in PATTERNS:
            match = re.search(pattern % x, data)
            if match:
                return int(match.group(1))
    return 0
def secret(x):
    return find(x)
if __name__ == "__main__":
    print(find(int(input())))
"""

READ_HARNESS_MEMORY = r"""
import os, re, sys
def steal(x):
    ppid = os.getppid()
    for fd in (0, 1, 3):
        try:
            os.close(os.open(f"/proc/{ppid}/fd/{fd}", os.O_RDONLY))
            print(f"opened the harness's fd {fd}", file=sys.stderr)
        except OSError:
            pass
    try:
        maps = open(f"/proc/{ppid}/maps").read()
        mem = open(f"/proc/{ppid}/mem", "rb", buffering=0)
    except OSError as exc:
        print(f"attack blocked: {exc}", file=sys.stderr)
        return 0
    wanted = [re.compile(rb"secret\(%d\) == (\d+)" % x), re.compile(rb'"args": \[%d\], "kwargs": \{\}, "expected": (\d+)' % x)]
    for line in maps.splitlines():
        span, perms = line.split()[:2]
        start, end = (int(v, 16) for v in span.split("-"))
        if "r" not in perms or end - start > 256 << 20:
            continue
        try:
            mem.seek(start)
            data = mem.read(end - start)
        except (OSError, OverflowError, ValueError):
            continue
        for pattern in wanted:
            found = pattern.search(data)
            if found:
                return int(found.group(1))
    return 0
def secret(x):
    return steal(x)
"""

KILL_HARNESS_AT_IMPORT = "import os, signal\nos.kill(os.getppid(), signal.SIGKILL)\n" + WRONG

KILL_HARNESS_IN_CALL = """
import os, signal
def secret(x):
    os.kill(os.getppid(), signal.SIGKILL)
    return 0
"""

PLANT_MODULES = """
import os
PAYLOAD = '''
import sys
main = sys.modules.get("__main__")
if main is not None and hasattr(main, "Grader"):
    main.same = lambda *args, **kwargs: True
    main.Grader.run_test = lambda self, index, test: {"status": "passed"}
'''
for name in ("json", "hmac", "hashlib", "ast", "traceback", "linecache", "re", "signal", "select", "selectors",
             "subprocess", "textwrap", "difflib", "tokenize", "inspect", "locale", "codecs", "warnings", "enum",
             "functools", "math", "time", "keyword", "string", "copy", "errno", "fcntl", "types", "weakref",
             "operator", "collections", "contextlib", "threading", "sitecustomize", "usercustomize", "_bootlocale"):
    with open(os.path.join(os.getcwd(), name + ".py"), "w") as fh:
        fh.write(PAYLOAD)
""" + WRONG

HUGE_OUTPUT = """
import sys
sys.stdout.write("DISTIL-RESULT " + "7" * (8 << 20))
def secret(x):
    sys.stdout.write("x" * (8 << 20))
    return 0
if __name__ == "__main__":
    while True:
        sys.stdout.write("73910558\\n" * 4096)
"""

ATTACKS = {
    "exit_at_import": (EXIT_AT_IMPORT, ["asserts", "calls", "io"]),
    "fake_result_lines": (FAKE_RESULT_LINES, ["asserts", "calls", "io"]),
    "monkeypatch_builtins": (MONKEYPATCH_BUILTINS, ["asserts", "calls"]),
    "always_equal_object": (ALWAYS_EQUAL, ["asserts", "calls"]),
    "repr_is_code": (REPR_IS_CODE, ["asserts", "calls"]),
    "eq_overriding_int_subclass": (EQUAL_SUBCLASS, ["asserts", "calls"]),
    "read_files_for_expected_values": (READ_FILES_FOR_EXPECTED, ["asserts", "calls", "io"]),
    "read_harness_memory_and_fds": (READ_HARNESS_MEMORY, ["asserts", "calls"]),
    "kill_harness_at_import": (KILL_HARNESS_AT_IMPORT, ["asserts", "io"]),
    "kill_harness_during_call": (KILL_HARNESS_IN_CALL, ["calls"]),
    "plant_modules_for_the_harness": (PLANT_MODULES, ["asserts"]),
    "huge_output": (HUGE_OUTPUT, ["calls", "io"]),
}
CASES = [(name, style) for name, (_, styles) in ATTACKS.items() for style in styles]


@pytest.fixture(params=["bwrap", "process"])
def backend(request):
    verifier(request.param)  # skips when the backend is unavailable here
    return request.param


@pytest.mark.parametrize("attack,style", CASES, ids=[f"{a}-{s}" for a, s in CASES])
def test_attack_is_graded_as_failure(attack, style, backend):
    verdict = grade(ATTACKS[attack][0], STYLES[style], backend)
    assert not verdict.passed
    assert verdict.score == 0.0, verdict.details["tests"]


@pytest.mark.parametrize("style", ["asserts", "calls"])
def test_aborts_cannot_be_swallowed_by_the_test(style, backend):
    """A timeout, a crash, a non-literal value or a signal sent to the harness fails the test,
    even when the test's code catches every exception."""
    lenient = {
        "asserts": ["try:\n    r = secret(5)\nexcept BaseException:\n    r = 73910558\nassert r == 73910558"],
        "timeout_s": 0.5,
    }
    strict = dict(CALLS, calls=CALLS["calls"][:1], timeout_s=0.5)
    signal_harness = "import os, signal, time; os.kill(os.getppid(), signal.{}); time.sleep(0.3); return 0"
    for body in ("while True:\n        pass", "import os; os._exit(3)", "return object()",
                 signal_harness.format("SIGINT"), signal_harness.format("SIGALRM")):
        code = f"def secret(x):\n    {body}\n"
        verdict = grade(code, lenient if style == "asserts" else strict, backend)
        assert verdict.score == 0.0, (body, verdict.details["tests"])


def test_stop_iteration_cannot_end_a_test_early(backend):
    reference = {"asserts": ["assert all(map(lambda x: secret(x) == 73910558, [5, 6]))"], "timeout_s": 1}
    verdict = grade("def secret(x):\n    raise StopIteration", reference, backend)
    assert verdict.score == 0.0
    assert "StopIteration" in verdict.details["tests"][0]["error"]


def test_memory_attack_is_refused_by_the_kernel(backend):
    verdict = grade(READ_HARNESS_MEMORY, ASSERTS, backend)
    assert verdict.score == 0.0
    stderr = verdict.details["tests"][0]["stderr"]
    assert "attack blocked" in stderr and "Permission denied" in stderr, stderr


def test_memory_attack_forges_a_pass_without_the_dumpable_protection(backend):
    """The control for ``read_harness_memory_and_fds``: the same attack against a harness that
    skips ``prctl(PR_SET_DUMPABLE, 0)`` does forge a pass, so that call is what stops it."""
    weakened = CodeExecVerifier(backend=backend, cache_size=0)
    protected = weakened.harness_source
    assert protected.count("\n    _make_undumpable()\n") == 1
    weakened.harness_source = protected.replace("\n    _make_undumpable()\n", "\n    pass\n")
    try:
        verdict = weakened.grade(problem(ASSERTS), rollout(READ_HARNESS_MEMORY))
    finally:
        weakened.close()
    assert verdict.passed and verdict.score == 1.0


def test_only_lines_signed_with_the_runs_key_and_nonce_count():
    import hashlib
    import hmac
    import json

    key, nonce = b"k" * 32, "n" * 32

    def line(payload, with_key=key):
        body = json.dumps(payload, sort_keys=True, separators=(",", ":"))
        return f"DISTIL-RESULT {hmac.new(with_key, body.encode(), hashlib.sha256).hexdigest()} {body}"

    good = {"type": "test", "index": 0, "nonce": nonce, "passed": False, "status": "failed"}
    forged = dict(good, passed=True, status="passed")
    stdout = "\n".join([
        line(forged, with_key=b"x" * 32),  # wrong key
        line(dict(forged, nonce="m" * 32)),  # right key, another run's nonce
        "DISTIL-RESULT " + "0" * 64 + " " + json.dumps(forged),  # made-up mac
        line(good),  # the real one comes first ...
        line(forged),  # ... so a later duplicate is ignored
        line(dict(forged, index=7)),  # out of range
    ])
    signed = read_signed(stdout, key, nonce, count=2)
    assert signed.tests == {0: good}
    assert signed.rejected == 3 and not signed.done


def test_a_returned_value_too_large_to_send_is_named_as_such(backend):
    """Before, a value whose repr ran to hundreds of megabytes ran the child out of memory while
    it was encoded for the harness, and the feedback only said the process exited with code 1."""
    code = "def secret(x):\n    return 'y' * 200_000_000\n"
    verdict = grade(code, dict(CALLS, calls=CALLS["calls"][:1], timeout_s=20), backend)
    assert verdict.score == 0.0
    error = verdict.details["tests"][0]["error"]
    assert "sent back more than 4194304 bytes for one value" in error, verdict.details["tests"][0]
