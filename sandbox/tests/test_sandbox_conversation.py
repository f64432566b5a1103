"""``backend.converse(job)``: a job's stdin written and its stdout read while it runs.

On bwrap and process; docker has no conversations. Each test waits on the program's answers
(``receive_until`` with a deadline), never on a fixed sleep.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time

import pytest
from distil_sandbox import Conversation, Job
from sandbox_testlib import cgroup_of_its_own, marked, new_marker, processes_with, required, sandbox, unavailable_reason

ECHO = r"""
import sys
for line in sys.stdin:
    sys.stdout.write("got " + line.strip() + "\nEND\n")
    sys.stdout.flush()
print("stdin ended", file=sys.stderr)
"""


@pytest.fixture(params=["bwrap", "process"])
def talker(request):
    """A backend that holds conversations; one unavailable here is skipped, or fails when
    ``DISTIL_SANDBOX_REQUIRE`` names it."""
    why = unavailable_reason(request.param)
    if why and required(request.param):
        pytest.fail(f"required by DISTIL_SANDBOX_REQUIRE, but {why}", pytrace=False)
    if why:
        pytest.skip(why)
    return sandbox(request.param)


def test_requests_and_answers_while_the_program_runs(talker):
    talk = talker.converse(Job(code=ECHO, timeout_s=30))
    assert isinstance(talk, Conversation)
    for i in range(3):
        talk.send(f"hello {i}\n".encode())
        assert talk.receive_until(b"END\n", 10) == f"got hello {i}\nEND\n".encode()
    talk.send(b"a\nb\n")  # two requests at once: two answers, taken one at a time
    assert talk.receive_until(b"END\n", 10) == b"got a\nEND\n"
    assert talk.receive_until(b"END\n", 10) == b"got b\nEND\n"
    assert talk.alive
    result = talk.close()
    assert result.ok and result.stderr == "stdin ended\n" and result.stdout == ""
    assert result.backend == talker.name and not talk.alive
    assert talk.receive_until(b"END\n", 1) is None  # after the end: nothing, at once


def test_an_answer_not_there_yet_is_waited_for_and_then_not_lost(talker):
    slow = "import sys, time\nline = sys.stdin.readline()\ntime.sleep(0.5)\nprint('late')\nsys.stdout.flush()\n" \
           "sys.stdin.readline()"
    talk = talker.converse(Job(code=slow, timeout_s=30))
    talk.send(b"go\n")
    assert talk.receive_until(b"late\n", 0.05) is None  # not yet: nothing consumed
    assert talk.receive_until(b"late\n", 10) == b"late\n"
    assert talk.close().ok


def test_timeout_s_bounds_the_whole_conversation(talker):
    talk = talker.converse(Job(code="import sys\nfor line in sys.stdin:\n    pass", timeout_s=1))
    started = time.monotonic()
    assert talk.receive_until(b"never", 30) is None  # the program is killed at its deadline
    assert time.monotonic() - started < 20
    result = talk.close()
    assert result.timed_out and not talk.alive


def test_a_reader_that_falls_behind_does_not_buffer_without_bound(talker):
    flood = "import sys\nsys.stdout.write('x' * 200000)\nsys.stdout.flush()\nsys.stdin.readline()"
    talk = talker.converse(Job(code=flood, timeout_s=30, output_limit=50000))
    assert talk.receive_until(b"y", 10) is None
    assert talk.overflowed
    talk.close()


def test_a_program_that_closes_its_stdin_early(talker):
    talk = talker.converse(Job(code="import os\nos.close(0)\nprint('closed', flush=True)\ninput_ = 1", timeout_s=30))
    assert talk.receive_until(b"closed\n", 10) == b"closed\n"
    talk.send(b"x" * 300000)  # nowhere to go: dropped, never blocking the caller
    result = talk.close()
    assert result.exit_code == 0


def test_a_program_that_never_reads_is_killed_when_closing_takes_too_long(talker):
    talk = talker.converse(Job(code="import time\nprint('up', flush=True)\ntime.sleep(60)", timeout_s=30))
    assert talk.receive_until(b"up\n", 10) == b"up\n"
    started = time.monotonic()
    result = talk.close(timeout_s=0.5)
    assert time.monotonic() - started < 10
    assert result is not None and not result.ok and not talk.alive


def test_a_job_with_stdin_of_its_own_is_refused(talker):
    with pytest.raises(ValueError, match="no stdin of its own"):
        talker.converse(Job(code="pass", stdin="x"))
    with pytest.raises(ValueError, match="timeout_s"):
        talker.converse(Job(code="pass", timeout_s=0))


def test_docker_holds_no_conversation():
    from distil_sandbox.docker_backend import DockerBackend

    assert not hasattr(DockerBackend, "converse")


def test_what_a_program_said_before_it_died_can_still_be_read(talker):
    talk = talker.converse(Job(code="import os, sys\nsys.stdout.write('half an answer')\nsys.stdout.flush()\n"
                                    "os.kill(os.getpid(), 9)", timeout_s=30))
    assert talk.receive_until(b"END\n", 10) is None  # it died first
    assert talk.receive_rest() == b"half an answer" and talk.receive_rest() == b""
    assert talk.close().signal == "SIGKILL"


def test_no_process_inside_can_take_the_conversation_from_the_sandbox_init():
    """On bwrap the namespace's init is the job's first process, of the job's uid: it holds none of
    the conversation's pipes, so a process of the job cannot take them from it."""
    why = unavailable_reason("bwrap")
    if why:
        pytest.skip(why)
    look = "import os\nprint([os.readlink(f'/proc/1/fd/{n}') for n in (0, 1, 2)], flush=True)\ninput()"
    talk = sandbox("bwrap").converse(Job(code=look, timeout_s=30))
    try:
        assert talk.receive_until(b"\n", 10) == b"['/dev/null', '/dev/null', '/dev/null']\n"
        talk.send(b"bye\n")
    finally:
        result = talk.close()
    assert result.ok


# Starts a conversation, sees its program answer, and exits without closing it.
LEAVES_A_CONVERSATION = """
import sys
from distil_sandbox import Job, get_backend
talk = get_backend(sys.argv[1]).converse(Job(code=sys.argv[2], timeout_s=120))
talk.send(b"hello\\n")
assert talk.receive_until(b"END\\n", 30) == b"got hello\\nEND\\n"
print("talking", flush=True)
"""


def test_a_conversation_left_open_at_exit_is_ended_and_cleaned_up(talker):
    """Its thread is a daemon, which exiting would stop before the backend removed the job's
    memory cgroup: the job is ended and its clean-up waited for at exit."""
    marker = new_marker()
    with cgroup_of_its_own() as (group, move_into_it):
        child = subprocess.run(
            [sys.executable, "-c", LEAVES_A_CONVERSATION, talker.name, marked(ECHO, marker)],
            capture_output=True, text=True, timeout=120, preexec_fn=move_into_it,
        )
        assert child.stdout == "talking\n", child.stderr
        assert [e.name for e in os.scandir(group) if e.is_dir()] == []
        assert processes_with(marker) == []
