"""The public API: what ``run`` returns for ordinary programs, on every backend."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import distil_sandbox
import pytest
from distil_sandbox import AUTO_ORDER, Job, available_backends, get_backend
from sandbox_testlib import run, sandbox, unavailable_reason, warm_up


def test_exit_codes_and_uncaught_exceptions(backend):
    assert run(backend, "print('hi')").exit_code == 0
    assert run(backend, "import sys\nsys.exit(3)").exit_code == 3
    assert run(backend, "exit 7", language="bash").exit_code == 7
    crashed = run(backend, "raise ValueError('boom')")
    assert crashed.exit_code == 1 and crashed.signal is None and not crashed.ok
    assert "ValueError: boom" in crashed.stderr


def test_success_fills_every_field(backend):
    result = run(backend, "print(sum(range(10**6)))")
    assert result.ok and result.error is None and not result.timed_out
    assert result.stdout == "499999500000\n" and result.stdout_bytes == b"499999500000\n"
    assert result.stderr == "" and not result.stdout_truncated and not result.stderr_truncated
    assert result.backend == sandbox(backend).name
    assert 0 < result.wall_s < 5 and 0 <= result.cpu_s < 5


def test_death_by_signal_is_reported_by_name(backend):
    terminated = run(backend, "import os, signal\nos.kill(os.getpid(), signal.SIGTERM)\nprint('alive')")
    assert (terminated.exit_code, terminated.signal, terminated.stdout) == (None, "SIGTERM", "")
    assert run(backend, "import os\nos.abort()").signal == "SIGABRT"
    assert run(backend, "kill -KILL $$", language="bash").signal == "SIGKILL"


def test_cpu_time_is_counted(backend):
    result = run(backend, "total = 0\nfor i in range(3 * 10**6):\n    total += i\n")
    assert result.ok and result.cpu_s >= 0.05


def test_stdout_and_stderr_are_separate(backend):
    result = run(backend, "import sys\nprint('out')\nprint('err', file=sys.stderr)\nprint('out2')")
    assert result.stdout == "out\nout2\n" and result.stderr == "err\n"


def test_stdin_as_text_and_bytes(backend):
    assert run(backend, "print(input()[::-1])", stdin="abc\n").stdout == "cba\n"
    raw = run(backend, "import sys\nprint(sys.stdin.buffer.read().hex())", stdin=b"\x00\xff")
    assert raw.stdout == "00ff\n"


def test_files_are_written_in_the_work_directory(backend):
    files = {"helper.py": "VALUE = 41\n", "data/input.txt": "payload", "blob.bin": b"\x00\x01"}
    code = (
        "import helper\n"
        "print(helper.VALUE + 1)\n"
        "print(open('data/input.txt').read())\n"
        "print(open('blob.bin', 'rb').read())\n"
    )
    result = run(backend, code, files=files)
    assert result.stdout == "42\npayload\nb'\\x00\\x01'\n", result.stderr


def test_a_backslash_in_a_file_name_is_part_of_the_name_on_every_backend(backend):
    """Before: the docker supervisor read ``\\`` as a directory separator, so ``a\\b`` and ``a/b``
    were one file there, and ``e\\f`` beside a file ``e`` could not be written."""
    files = {"a\\b": "backslash", "c/d": "slash", "c\\d": "other", "e": "file", "e\\f": "beside"}
    code = "import os\nprint(sorted(os.listdir('.')), open('a\\\\b').read(), open('c\\\\d').read(), open('c/d').read())"
    result = run(backend, code, files=files)
    assert result.stdout == "['a\\\\b', 'c', 'c\\\\d', 'e', 'e\\\\f', 'main.py'] backslash other slash\n", result


@pytest.mark.parametrize(
    "name, fragment",
    [
        ("/etc/passwd", "relative"),
        ("../outside.txt", ".."),
        ("a/../../b", ".."),
        ("", "non-empty"),
        (".", "does not name a file"),
        ("main.py", "replace the program"),
    ],
)
def test_bad_file_paths_are_refused_before_anything_runs(name, fragment):
    with pytest.raises(ValueError, match=fragment) as info:
        distil_sandbox.run("print(1)", files={name: "x"})
    assert repr(name) in str(info.value)


def test_files_larger_than_a_job_may_write_are_refused():
    with pytest.raises(ValueError, match="max_file_mb"):
        distil_sandbox.run("print(1)", files={"big.bin": b"0" * (17 << 20)})


@pytest.mark.parametrize("limits, fragment", [
    # before: an OverflowError from a timer or a selector, after the job had started
    ({"timeout_s": float("inf")}, "timeout_s must be a number of seconds above 0 and at most 86400"),
    ({"timeout_s": 1e12}, "timeout_s must be a number of seconds above 0 and at most 86400"),
    ({"timeout_s": 0}, "timeout_s must be a number of seconds above 0"),
    ({"stdin": 123}, "stdin must be text or bytes, not int"),  # before: a TypeError deep inside
    ({"output_limit": True}, "output_limit must be a positive integer, not True"),
    # before: a UnicodeEncodeError naming neither, raised inside the backend (on bwrap after a
    # warm sandbox was taken, which was then never released)
    ({"stdin": "x\ud800"}, r"stdin holds a lone surrogate \(U\+D800\) at character 1, which UTF-8 cannot encode"),
    ({"files": {"a.txt": "\udcff"}}, r"job file 'a.txt' holds a lone surrogate \(U\+DCFF\) at character 0"),
])
def test_limits_no_backend_can_keep_are_refused_before_anything_runs(backend, limits, fragment):
    with pytest.raises(ValueError, match=fragment):
        distil_sandbox.run("print(1)", backend=backend, **limits)


# The largest value of each limit (distil_sandbox.MAX_LIMITS), and what it is.
LARGEST = {
    "memory_mb": (1 << 30, "1 PiB"), "max_file_mb": (1 << 30, "1 PiB"), "work_mb": (1 << 30, "1 PiB"),
    "max_processes": (1 << 22, "the most pids Linux can have"),
    "max_open_files": (1 << 30, "more than any kernel lets a process open"),
    "output_limit": (1 << 32, "4 GiB of each stream"),
}


@pytest.mark.parametrize("field", sorted(LARGEST))
def test_each_size_limit_has_a_largest_value_that_every_backend_keeps(backend, field):
    """Before: ``memory_mb=2**44`` passed the check, then failed in each backend's own words
    (an rlimit, a tmpfs size, the engine's 64-bit fields) after the job had started."""
    most, what = LARGEST[field]
    with pytest.raises(ValueError) as refused:
        sandbox(backend).run(Job(code="print(1)", **{field: most + 1}))
    assert str(refused.value) == f"{field} must be at most {most} ({what}), not {most + 1}"
    assert sandbox(backend).run(Job(code="print(1)", **{field: most})).stdout == "1\n"


def test_bash_programs(backend):
    result = run(backend, 'read name; echo "hello $name"; echo oops >&2; exit 2', language="bash", stdin="world\n")
    assert (result.stdout, result.stderr, result.exit_code) == ("hello world\n", "oops\n", 2)


def test_unknown_language_is_refused():
    with pytest.raises(ValueError, match="python, bash"):
        distil_sandbox.run("puts 1", language="ruby")


def test_timeout_reports_timed_out_and_the_signal(backend):
    result = run(backend, "import time\ntime.sleep(30)", timeout_s=0.5)
    assert result.timed_out and result.signal == "SIGKILL" and result.exit_code is None and not result.ok
    assert 0.5 <= result.wall_s < 2


def test_output_limit_is_respected_per_stream(backend):
    code = "import sys\nsys.stdout.write('a' * 5000)\nsys.stderr.write('b' * 50)"
    result = run(backend, code, output_limit=100)
    assert result.stdout == "a" * 100 and result.stdout_truncated
    assert result.stderr == "b" * 50 and not result.stderr_truncated
    assert result.exit_code == 0


def test_auto_picks_the_first_available_backend():
    first = next(name for name in AUTO_ORDER if not unavailable_reason(name))
    assert get_backend("auto").name == first
    assert distil_sandbox.run("print(1)").backend == first


def test_auto_prefers_bwrap_where_it_works():
    if unavailable_reason("bwrap"):
        pytest.skip(unavailable_reason("bwrap"))
    assert distil_sandbox.run("print(1)").backend == "bwrap"


def test_unknown_backend_lists_the_valid_ones():
    with pytest.raises(ValueError) as info:
        distil_sandbox.run("print(1)", backend="chroot")
    for name in ("auto", *AUTO_ORDER):
        assert name in str(info.value)


def test_available_backends_names_every_backend_with_a_reason():
    status = available_backends()
    assert list(status) == list(AUTO_ORDER)
    for name, why in status.items():
        assert isinstance(why, str)
        assert (why == "") == (unavailable_reason(name) == "")


def test_limits_must_be_positive():
    with pytest.raises(ValueError, match="timeout_s"):
        distil_sandbox.run("print(1)", timeout_s=0)
    with pytest.raises(ValueError, match="memory_mb"):
        distil_sandbox.run("print(1)", memory_mb=-1)


def test_concurrent_jobs_do_not_see_each_other(backend):
    code = (
        "import os, sys, time\n"
        "me = sys.stdin.read()\n"
        "open('mine', 'w').write(me)\n"
        "time.sleep(0.3)\n"
        "print(open('mine').read(), sorted(os.listdir('.')))\n"
    )
    warm_up(backend, Job(code=code, stdin="0", timeout_s=10), 4)
    with ThreadPoolExecutor(4) as pool:
        results = list(pool.map(lambda i: run(backend, code, stdin=str(i), timeout_s=10), range(4)))
    assert [r.stdout for r in results] == [f"{i} ['main.py', 'mine']\n" for i in range(4)]
