"""Ctrl-C ends a command at once, even while a plugin's blocking call never comes back.

Python cannot stop a thread. Before, ``resolve`` (``asyncio.run``) waited at Ctrl-C for every
thread of the loop's executor, so a tool or critic stuck on a thread kept the interrupt from
reaching the trainer, and a normal exit then waited for that thread again. Each test runs a
real process and sends it a real SIGINT once the stuck thread has started.
"""

import subprocess
import sys
import textwrap

STUCK = textwrap.dedent("""
    import os, signal, threading
    started = threading.Event()

    def stuck():  # a blocking call that never returns
        started.set()
        threading.Event().wait()

    def interrupt_once_stuck():  # Ctrl-C, as the main thread receives it
        started.wait()
        signal.pthread_kill(threading.main_thread().ident, signal.SIGINT)
""")


def run(script: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", STUCK + textwrap.dedent(script)], capture_output=True,
                          text=True, timeout=120)


def test_an_interrupt_reaches_the_caller_of_resolve_while_a_thread_is_stuck():
    done = run("""
        import asyncio
        from distil_core import resolve

        async def feedback():
            return await asyncio.to_thread(stuck)

        threading.Thread(target=interrupt_once_stuck, daemon=True).start()
        try:
            resolve(feedback())
        except KeyboardInterrupt:
            print("interrupted", flush=True)
            os._exit(0)  # only this test's own exit: the next test checks the command's
    """)
    assert done.returncode == 0 and done.stdout == "interrupted\n", done.stderr


def test_an_interrupted_command_exits_without_its_stuck_thread():
    """``distil`` itself: the interrupt's message, exit status 130, and no wait for the thread
    (a normal interpreter exit would join it for ever)."""
    done = run("""
        import sys
        import distil_core.cli.main
        cli = sys.modules["distil_core.cli.main"]

        def command(args):
            threading.Thread(target=stuck).start()  # not a daemon: an exit would wait for it
            interrupt_once_stuck()
            threading.Event().wait()  # the command's own work, until the interrupt

        parser = cli._parser
        def with_hang():
            p = parser()
            sub = next(a for a in p._actions if a.dest == "command")
            sub.add_parser("hang").set_defaults(func=command, interrupted="stopped by the user")
            return p
        cli._parser = with_hang
        import atexit
        atexit.register(lambda: print("sandboxes cleaned up", flush=True))  # what a sandbox registers
        sys.argv = ["distil", "hang"]
        sys.exit(cli.main())
    """)
    assert done.returncode == 130, done.stderr
    assert done.stderr.strip().splitlines()[-1] == "stopped by the user"
    assert done.stdout == "sandboxes cleaned up\n"  # the exit past the thread still runs the clean-up


def test_an_interrupted_command_whose_threads_finish_exits_normally():
    done = run("""
        import atexit, sys
        import distil_core.cli.main
        cli = sys.modules["distil_core.cli.main"]

        def command(args):
            worker = threading.Thread(target=lambda: (started.set(), print("worker done", flush=True)))
            worker.start()
            interrupt_once_stuck()
            threading.Event().wait()

        parser = cli._parser
        def with_command():
            p = parser()
            next(a for a in p._actions if a.dest == "command").add_parser("work").set_defaults(func=command)
            return p
        cli._parser = with_command
        atexit.register(lambda: print("normal exit", flush=True))  # skipped by an exit past threads
        sys.argv = ["distil", "work"]
        sys.exit(cli.main())
    """)
    assert done.returncode == 130, done.stderr
    assert done.stdout.splitlines() == ["worker done", "normal exit"]
