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
