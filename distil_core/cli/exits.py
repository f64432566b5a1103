"""How a ``distil`` command ends when something stops it: an error the user can fix, or Ctrl-C."""

from __future__ import annotations

import os
import select
import sys
import traceback

from distil_core.errors import DistilError
from distil_core.text import shown_safely

TRACEBACK_VARIABLE = "DISTIL_TRACEBACK"
"""Set (to anything but "" or "0"), a stopped command prints the whole chained traceback too."""


def report_error(exc: DistilError) -> int:
    """Print ``exc`` as one paragraph and return its exit code.

    The paragraph is what a user needs; whoever debugs a plugin needs the exception underneath
    it too. A :class:`~distil_core.errors.PluginError` names the plugin's line, but not how the
    code got there, so with ``DISTIL_TRACEBACK=1`` the chained traceback comes first, and
    without it an error that wraps another says how to see it.
    """
    wanted = os.environ.get(TRACEBACK_VARIABLE, "") not in ("", "0")
    if wanted:  # the messages in it quote the same outside words as the one line: escaped alike
        print(shown_safely("".join(traceback.format_exception(exc))), end="", file=sys.stderr)
    print(f"error: {shown_safely(str(exc))}", file=sys.stderr)
    if not wanted and exc.__cause__ is not None and not isinstance(exc.__cause__, DistilError):
        print(f"({TRACEBACK_VARIABLE}=1 prints the traceback of the "
              f"{type(exc.__cause__).__name__} underneath.)", file=sys.stderr)
    return exc.exit_code


STUCK_GRACE_S = 5.0
"""How long an interrupted command waits for its other threads before it exits without them."""


def exit_past_stuck_threads(code: int) -> None:
    """End the process with ``code`` now if a thread still runs :data:`STUCK_GRACE_S` seconds
    after an interrupt; return (a normal exit follows) when every thread has finished.

    A plugin's blocking call (a tool, a critic, a client) can run on a thread that never comes
    back, and Python cannot stop a thread: a normal exit waits for it, so Ctrl-C would leave the
    process hanging, and a user would have to press it again and again or kill it. Checkpoints
    and stores are written whole or not at all, and the commands close their components before
    this point; what was registered to run at exit (a sandbox's clean-up) runs before the exit.
    """
    import threading
    import time

    deadline = time.monotonic() + STUCK_GRACE_S
    for thread in threading.enumerate():
        if thread is not threading.current_thread() and not thread.daemon:
            thread.join(max(deadline - time.monotonic(), 0.0))
    if any(t.is_alive() and not t.daemon and t is not threading.current_thread() for t in threading.enumerate()):
        import atexit

        atexit._run_exitfuncs()  # what the process registered to clean up (sandboxes, containers) still runs
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)


SIGPIPE_EXIT = 141
"""A shell's exit status for a command whose output's reader went away (128 + SIGPIPE)."""


def flush_output() -> None:
    """Write out what the command printed, while its errors can still be reported: a closed
    reader raises BrokenPipeError (:func:`stdout_reader_gone`), a full disk a DistilError naming
    it. No stdout (closed at launch, or pythonw) has nothing to flush."""
    if sys.stdout is None:
        return
    try:
        sys.stdout.flush()
    except BrokenPipeError:
        raise
    except OSError as exc:
        raise DistilError(f"could not write the command's output: {exc.strerror or exc}; free space where stdout "
                          "goes, or send it elsewhere") from exc


def stdout_reader_gone() -> bool:
    """Whether a BrokenPipeError came from stdout, its reader having closed it (``distil bench
    --dry-run | head``), rather than from a pipe or socket the command itself uses (which is an
    error to report): the pipe's write end then polls as an error. Where it did, stdout is pointed
    at os.devnull, so the flush at exit fails no more, and the command stops as a shell tool does,
    without a traceback."""
    try:
        fd = sys.stdout.fileno()
        poller = select.poll()
    except (AttributeError, ValueError, OSError):  # no real stdout, or no poll (Windows)
        return False
    poller.register(fd, select.POLLOUT)
    if not any(events & (select.POLLERR | select.POLLHUP) for _fd, events in poller.poll(0)):
        return False
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, fd)
    os.close(devnull)
    return True
