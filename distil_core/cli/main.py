"""``distil``: train, evaluate, plot runs, list plugins, benchmark, serve; plugins add their own commands.

    distil train [CONFIG] [--set key=value ...] [--output-dir DIR] [--resume | --overwrite]
    distil eval  [RUN_DIR | CONFIG] [--set key=value ...] [--json]
    distil plot  RUN_DIR [RUN_DIR ...] [--output PNG|PDF|SVG] [--metrics M ...] [--json]
    distil plugins [--json]
    distil bench [SPEC] [--quick] [--suites S ...] [--methods M ...] [--seeds N ...] [--output-dir DIR] [--report-dir DIR]
    distil serve [--model tiny|PATH] [--port 0] [--host 127.0.0.1] [--api-key KEY] [--fault SPEC ...]

Errors the user can fix print as one paragraph, without a traceback (exit code 2 for config
and usage errors, 1 otherwise).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Any, Optional, Sequence

from distil_core.version import __version__
from distil_core.cli.tables import render_before_after, render_table
from distil_core.cli.exits import SIGPIPE_EXIT, exit_past_stuck_threads, flush_output, report_error, stdout_reader_gone
from distil_core.errors import ConfigError, DistilError
from distil_core.text import shown_safely


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = _parser()
    from_command_line = argv is None
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parser.parse_args(argv)
    args.argv = argv
    if not getattr(args, "command", None):
        parser.print_help()
        return 2
    code = 0
    try:
        code = args.func(args)
        if from_command_line:  # a reader that went away is found here, not at the interpreter's exit
            flush_output()
        return code
    except DistilError as exc:
        return report_error(exc)
    except BrokenPipeError:
        if from_command_line and stdout_reader_gone():
            return code or SIGPIPE_EXIT
        raise
    except KeyboardInterrupt:
        print(getattr(args, "interrupted", "interrupted"), file=sys.stderr)
        if from_command_line:  # a caller in this process keeps its threads
            exit_past_stuck_threads(130)
        return 130


def _parser() -> argparse.ArgumentParser:
    parser, sub = _builtin_parser()
    _add_plugin_commands(sub)
    return parser


def _builtin_parser() -> tuple[argparse.ArgumentParser, Any]:
    """The parser with the built-in commands only, and its subparsers action."""
    parser = argparse.ArgumentParser(prog="distil", description="Train language models from rich feedback with DistIL.")
    parser.add_argument("--version", action="version", version=f"distil-toolkit {__version__}")
    sub = parser.add_subparsers(dest="command")
    for add in (_add_train, _add_eval, _add_plot, _add_plugins, _add_bench, _add_serve):
        add(sub)
    return parser, sub


def builtin_commands() -> list[str]:
    """The names of the built-in commands, read from the parser itself (plugins cannot take these)."""
    return list(_builtin_parser()[1].choices)


def _add_train(sub: Any) -> None:
    train = sub.add_parser("train", help="train a model (no CONFIG: the embedded default)")
    train.add_argument("config", nargs="?", help="YAML config file (default: the embedded default run)")
    train.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                       help="override a config key, e.g. --set train.steps=20 (repeatable)")
    train.add_argument("--output-dir", type=_path, help="run directory (default: runs/<method>-<time>)")
    train.add_argument("--resume", action="store_true",
                       help="continue the run in --output-dir from its latest checkpoint")
    train.add_argument("--overwrite", action="store_true",
                       help="replace the run in --output-dir (its logs, checkpoints and final model are deleted)")
    train.add_argument("--print-config", action="store_true", help="print the resolved config as YAML and exit")
    train.add_argument("--quiet", action="store_true", help="no progress bars and no step lines")
    train.set_defaults(func=cmd_train, interrupted="interrupted; the last checkpoint is intact (continue with --resume)")


def _add_eval(sub: Any) -> None:
    ev = sub.add_parser("eval", help="evaluate a run's final model (or a config's model) on held-out problems")
    ev.add_argument("target", nargs="?", help="a run directory or a YAML config (default: the embedded default)")
    ev.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    ev.add_argument("--json", action="store_true", help="print the metrics as JSON")
    ev.add_argument("--quiet", action="store_true")
    ev.set_defaults(func=cmd_eval)


def _add_plot(sub: Any) -> None:
    plot = sub.add_parser("plot", help="draw the curves of one or several runs, overlaid, into one PNG")
    plot.add_argument("runs", nargs="+", metavar="RUN_DIR", help="run directories (written by distil train)")
    plot.add_argument("--output", type=_path, help="the picture to write, .png, .pdf or .svg by its suffix (default: "
                                       "RUN_DIR/curves.png for one run, ./curves.png for several)")
    plot.add_argument("--metrics", nargs="+", type=_names, metavar="M",
                      help="panels to draw (default: reward pass@1 response_tokens ce_to_expert kl_to_expert "
                           "feedback_coverage time); any numeric key of metrics.jsonl or eval.jsonl also works")
    plot.add_argument("--json", action="store_true", help="print what was drawn (panels, legend labels) as JSON")
    plot.set_defaults(func=cmd_plot)


def _add_plugins(sub: Any) -> None:
    plugins = sub.add_parser("plugins", help="list installed plugins and what each registered; with --options "
                             "or NAMEs, each component's options and defaults")
    plugins.add_argument("components", nargs="*", metavar="NAME",
                         help="components (tasks, verifiers, feedback sources, experts, ...) whose options to list")
    plugins.add_argument("--options", action="store_true", help="every component's options and their defaults")
    plugins.add_argument("--json", action="store_true")
    plugins.set_defaults(func=cmd_plugins)


def _add_bench(sub: Any) -> None:
    bench = sub.add_parser("bench", help="train every method on every suite and seed with one budget; tables and plots")
    bench.add_argument("spec", nargs="?", help="bench spec YAML (default: the embedded bench, "
                                               "distil_core/cli/bench.yaml: every suite, method and seed)")
    bench.add_argument("--quick", action="store_true", help="the spec's smoke-test sizes (one seed, a few steps)")
    bench.add_argument("--suites", nargs="+", type=_names, metavar="SUITE", help="run only these suites (space- or comma-separated)")
    bench.add_argument("--methods", nargs="+", type=_names, metavar="METHOD", help="run only these methods (space- or comma-separated)")
    bench.add_argument("--seeds", nargs="+", type=_seeds, metavar="SEED", help="override the spec's seeds")
    bench.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                       help="override a run config key in every run (e.g. model.name=PATH)")
    bench.add_argument("--output-dir", type=_path, help="where the runs go (default: runs/bench or runs/bench-quick); "
                                            "finished runs there are reused")
    bench.add_argument("--report-dir", type=_path, help="where bench.md, bench.json and the plots go (default: --output-dir)")
    bench.add_argument("--dry-run", action="store_true", help="list the runs and exit")
    bench.add_argument("--sweep", metavar="KEY=V1,V2,...", action="append",
                       help="choose KEY per method on the validation split (eval.split=validation, never the test "
                       "problems): every value is run and the best mean validation metric wins; writes sweep.md/json. "
                       "Given for several keys, their values are taken together in order (the first of each, then "
                       "the second, …): --sweep rollout.problems_per_step=16,64 --sweep rollout.samples_per_problem=8,2")
    bench.set_defaults(func=cmd_bench, interrupted="interrupted; the finished runs are kept: run the same command "
                       "again to go on (they are reused, the interrupted one starts again)")


def _add_serve(sub: Any) -> None:
    serve = sub.add_parser("serve", help="serve a local model over an OpenAI-compatible HTTP API, with log-probs")
    serve.add_argument("--model", default="tiny", help="'tiny' (the embedded default's base model), 'smollm2', a .gguf file, or a local model directory")
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, default=0, help="0 picks a free port (printed on start)")
    serve.add_argument("--name", help="the model name clients send (default: 'tiny', a GGUF file's model name, or the directory's name)")
    serve.add_argument("--api-key", help="require 'Authorization: Bearer KEY' on every request")
    serve.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                       help="config overrides that pick the tiny base, e.g. --set model.tiny.steps=60")
    serve.add_argument("--fault", dest="faults", action="append", default=[], metavar="SPEC",
                       help="test hook for clients: make the next request fail (429[:RETRY_AFTER], 500, 503, "
                            "slow:SECONDS, malformed, no_logprobs, no_token_ids, ok); repeat to queue several")
    serve.add_argument("--max-connections", type=_positive, default=None, metavar="N",
                       help="connections served at once (default 256); one more is answered 503 with Retry-After")
    serve.add_argument("--max-request-rows", type=_positive, default=None, metavar="N",
                       help="the most generations (prompts × n) one request may ask for (default 1024)")
    serve.add_argument("--verbose", action="store_true", help="log every request")
    serve.set_defaults(func=cmd_serve)


def _names(text: str) -> list[str]:
    names = [name for name in text.split(",") if name]
    if not names:
        raise argparse.ArgumentTypeError(f"{text!r} names nothing")
    return names


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text!r}: give at least 1")
    return value


def _path(text: str) -> str:
    """A file or directory given on the command line: an empty one (``--output-dir ""``, an unset
    shell variable) is refused, rather than read as "not given" and the default used."""
    if not text.strip():
        raise argparse.ArgumentTypeError("an empty path names nothing; give a path, or leave the flag out for "
                                         "the default")
    return text


def _seeds(text: str) -> list[int]:
    try:
        seeds = [int(seed) for seed in text.split(",") if seed]
    except ValueError:
        raise argparse.ArgumentTypeError(f"seeds are integers (got {text!r})") from None
    if not seeds:
        raise argparse.ArgumentTypeError(f"{text!r} names no seed")
    return seeds


def _add_plugin_commands(sub: Any) -> None:
    """Subcommands that plugins registered through ``register_commands``.

    A plugin command named like a built-in one is skipped with a one-line error naming the
    plugin: argparse would refuse the duplicate and take every other command down with it.
    """
    from distil_core.plugin_host import get_host

    host = get_host()
    builtin = set(sub.choices)
    for name in host.names("command"):
        reg = host.get("command", name)
        if name in builtin:
            print(f"error: plugin {reg.plugin!r} registers a command {name!r}, but `distil {name}` is built in; "
                  "its command is ignored (rename it in the plugin).", file=sys.stderr)
            continue
        command = reg.factory
        parser = sub.add_parser(name, help=f"{reg.description} [plugin {reg.plugin}]")
        command.configure(parser)
        parser.set_defaults(func=command.run)


# -- train ------------------------------------------------------------------------------------


def is_own_config(config_path: Optional[str], run_dir: Optional[str]) -> bool:
    """Whether ``config_path`` is ``run_dir``'s own config.yaml (a link to it too): read as the
    run trained, with the values of keys added since it was written."""
    saved = os.path.join(run_dir or "", "config.yaml")
    try:
        return bool(config_path and run_dir) and os.path.samefile(config_path, saved)
    except OSError:  # either file missing: not the same file
        return False


def cmd_train(args: argparse.Namespace) -> int:
    from distil_core.config import load_config

    config_path = args.config
    if args.resume and args.overwrite:
        raise ConfigError("--resume continues the run in --output-dir and --overwrite replaces it: give one of them.")
    if args.resume:
        if not args.output_dir:
            raise ConfigError("--resume needs --output-dir: the run directory to continue.")
        from distil_core.run_files import check_resumable
        from distil_core.training.runlock import check_free

        check_free(args.output_dir)  # a run still being set up there has no config.yaml yet
        check_resumable(args.output_dir)  # before any config is loaded or model built
        saved = os.path.join(args.output_dir, "config.yaml")
        if config_path is None:
            if not os.path.exists(saved):
                raise ConfigError(f"--resume: {args.output_dir} has no config.yaml, so the config the run started "
                                  "with is unknown; give it as CONFIG (distil train CONFIG --output-dir ... --resume).")
            config_path = saved
    config = load_config(config_path, args.overrides, saved=args.resume and is_own_config(config_path, args.output_dir))
    if args.output_dir:
        config.train.output_dir = args.output_dir  # where everything of the run goes (server syncs too)
    if args.print_config:
        print(config.to_yaml(), end="")
        return 0
    _quiet_libraries()
    from distil_core.training.distributed import close_world
    from distil_core.training.trainer import Trainer

    trainer = Trainer(config, run_dir=args.output_dir, resume=args.resume, overwrite=args.overwrite, quiet=args.quiet)
    world = trainer.world
    finished = False
    try:
        if world.main:
            ranks = f" ranks={world.size}" if world.distributed else ""
            print(f"distil train: method={config.method} task={config.task.name} expert={config.expert.name} "
                  f"steps={config.train.steps}{ranks} → {trainer.run_dir}", file=sys.stderr)
        summary = trainer.fit()
        if world.main:
            print(render_before_after(summary))
            print(f"\nRun directory: {summary['run_dir']} (summary.json, metrics.jsonl, rollouts.jsonl, provenance.jsonl, final/)")
        finished = True
    finally:
        close_world(world, finished)
    if finished and world.distributed:
        # Everything the run writes is closed by now. A rank skips the interpreter's own tear-down:
        # gloo's worker threads can abort a process while the interpreter is being finalized.
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(0)
    return 0


# -- eval -------------------------------------------------------------------------------------


def cmd_eval(args: argparse.Namespace) -> int:
    from distil_core.config import load_config, run_dir_config

    target, overrides = args.target, list(args.overrides)
    if target and os.path.isdir(target):
        config = run_dir_config(target, overrides)  # its config.yaml, its final/ model
    else:
        config = load_config(target, overrides)
    if args.quiet or args.json:
        config.train.progress = False
    _quiet_libraries()
    from distil_core.training.distributed import World
    from distil_core.training.evaluate import evaluate_on_ranks, evaluation_split
    from distil_core.training.runtime import build_runtime

    rt = build_runtime(config, progress=config.train.progress, for_training=False)  # evaluation needs no expert and no feedback
    split = config.eval.split
    try:
        _, problems = evaluation_split(rt.task, split, config.eval.problems, config.task.name)  # what training evaluates on
        # the evaluation training runs (its seed, eval.greedy), on one process
        result = evaluate_on_ranks(rt, config, World(), problems, label=split, progress=config.train.progress)
    finally:  # the verifier's workers and sandboxes, also at Ctrl-C (as a training run's are)
        for failure in rt.close():
            print(f"warning: {shown_safely(failure)}", file=sys.stderr)
    if args.json:
        # JSON holds fractions in [0, 1] (as summary.json and eval.jsonl do); the table, percent
        print(json.dumps({"model": rt.model_source, "task": config.task.name, "split": split,
                          "problems": len(problems), "samples": config.eval.samples, "units": "fraction", **result},
                         indent=2))
    else:
        where = "held-out" if split == "test" else "validation"
        print(f"{rt.model_source} on {where} {config.task.name} ({len(problems)} problems × {config.eval.samples} samples)")
        print(render_table([("metric", "value (%)")] + [(k, f"{100 * v:.1f}") for k, v in result.items() if "@" in k]))
    return 0


# -- plot -------------------------------------------------------------------------------------


def cmd_plot(args: argparse.Namespace) -> int:
    from distil_core.cli.curves import main_plot

    args.metrics = [name for group in args.metrics for name in group] if args.metrics else None
    return main_plot(args)


# -- plugins ----------------------------------------------------------------------------------


def cmd_plugins(args: argparse.Namespace) -> int:
    from distil_core.cli.plugins import main_plugins

    return main_plugins(args)


# -- bench ------------------------------------------------------------------------------------


def cmd_bench(args: argparse.Namespace) -> int:
    _quiet_libraries()
    if args.sweep:
        from distil_core.cli.sweep import main_sweep

        return main_sweep(args)
    from distil_core.cli.bench import main_bench

    return main_bench(args)


# -- serve ------------------------------------------------------------------------------------


def cmd_serve(args: argparse.Namespace) -> int:
    _quiet_libraries()
    from distil_core.cli.serve import main_serve

    return main_serve(args)


def _quiet_libraries() -> None:
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    try:
        from transformers.utils import logging as hf_logging

        hf_logging.set_verbosity_error()
        hf_logging.disable_progress_bar()
    except ImportError:
        pass


if __name__ == "__main__":
    raise SystemExit(main())
