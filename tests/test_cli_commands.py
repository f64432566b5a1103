"""`distil`'s commands: the built-in names come from the parser, and a plugin cannot take one."""

from distil_core import get_host, hookimpl
from distil_core.cli.main import builtin_commands, main


class _Shadow:
    """A command that would replace a built-in one."""

    calls = []

    @staticmethod
    def configure(parser):
        parser.add_argument("anything", nargs="*")

    @staticmethod
    def run(args):
        _Shadow.calls.append(args)
        return 7


class _BenchPlugin:
    @hookimpl
    def register_commands(register):
        register("bench", _Shadow)
        register("shadow-ok", _Shadow)


def test_the_builtin_commands_are_the_parsers_own():
    assert builtin_commands() == ["train", "eval", "plot", "plugins", "bench", "serve"]


def test_a_plugin_command_named_like_a_builtin_is_refused_and_the_rest_keep_working(capsys, tmp_path):
    host = get_host()
    host.register_plugin(_BenchPlugin, "usurper")
    try:
        spec = tmp_path / "missing.yaml"
        assert main(["bench", str(spec)]) == 2  # the built-in bench ran: it refused the missing spec
        err = capsys.readouterr().err
        refusals = [line for line in err.splitlines() if "'usurper'" in line]
        assert len(refusals) == 1 and "'bench'" in refusals[0] and "built in" in refusals[0]
        assert "does not exist" in err and not _Shadow.calls
        assert main(["shadow-ok", "x"]) == 7 and len(_Shadow.calls) == 1  # its other command works
        assert main(["plugins", "--json"]) == 0
        assert "'usurper'" in capsys.readouterr().err  # said on every command while it is installed
    finally:
        host.unregister_plugin("usurper")
    assert main(["plugins", "--json"]) == 0
    assert "usurper" not in capsys.readouterr().err


def test_a_command_whose_reader_closed_its_output_stops_quietly():
    """``distil bench --dry-run | head -1``: before, the closed pipe ended the command with a
    BrokenPipeError traceback (or, for output that fit the buffer, an "Exception ignored" at
    exit). Now it stops as a shell tool does: no traceback, exit status 141 (128 + SIGPIPE)."""
    import os
    import subprocess
    import sys

    spec = os.path.join(os.path.dirname(__file__), "data", "bench_digits.yaml")
    command = [sys.executable, "-m", "distil_core", "bench", spec, "--quick", "--dry-run"]
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    proc.stdout.close()  # the reader goes away before the command writes its first line
    _out, err = proc.communicate(timeout=120)
    assert proc.returncode == 141, err.decode()
    assert b"Traceback" not in err and b"BrokenPipe" not in err and b"Exception ignored" not in err
    # the same command read to its end still exits 0 and prints its plan
    done = subprocess.run(command, capture_output=True, timeout=120)
    assert done.returncode == 0 and b"seed 0" in done.stdout
    # a BrokenPipeError from a pipe or socket of the command's own, stdout still read, is not swallowed
    check = "from distil_core.cli.exits import stdout_reader_gone; import sys; sys.exit(3 if stdout_reader_gone() else 4)"
    assert subprocess.run([sys.executable, "-c", check], capture_output=True, timeout=60).returncode == 4
    # a command started with no stdout at all (closed at launch) still succeeds
    closed = subprocess.run(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, timeout=120,
                            preexec_fn=lambda: os.close(1))
    assert closed.returncode == 0, closed.stderr.decode()
