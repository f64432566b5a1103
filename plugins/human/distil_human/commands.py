"""The ``distil review`` and ``distil corrections`` subcommands."""

from __future__ import annotations

import argparse
import getpass
import os
import sys
from dataclasses import replace

from distil_core import ConfigError

from .exchange import export_jsonl, read_jsonl, store_entries
from .location import ENV_DB
from .review import ReviewSession
from .review_queue import SORTS, VERDICTS, QueueFilter, build_queue, parse_steps, queue_items, read_rollouts
from .store import CorrectionStore
from .text import MAX_AUTHOR, author_name, skipped_note
from .verify import SolutionChecker

DB_HELP = f"the corrections store (default: ${ENV_DB}, else ~/.local/share/distil/human.sqlite)"


class ReviewCommand:
    """review a run's failed rollouts in the terminal and record corrections or better solutions"""

    @staticmethod
    def configure(parser: argparse.ArgumentParser) -> None:
        parser.add_argument("run_dir", metavar="RUN_DIR", help="a run directory written by `distil train`")
        parser.add_argument("--db", help=DB_HELP)
        parser.add_argument("--author",
                            help="name stored with each entry (default: $DISTIL_HUMAN_AUTHOR, else your login)")
        parser.add_argument("--only-unreviewed", action="store_true",
                            help="leave out responses that already have a correction or solution in the store")
        parser.add_argument("--problem", metavar="ID", help="review only this problem's failed rollouts")
        parser.add_argument("--sort", choices=list(SORTS), default="failing",
                            help="order of the problems: " + "; ".join(f"{k}: {v}" for k, v in SORTS.items())
                            + " (default: failing)")
        parser.add_argument("--verdict", choices=list(VERDICTS), default="failed",
                            help="only failed responses of this kind (default: failed, all of them)")
        parser.add_argument("--source", metavar="NAME", help="only rollouts that got feedback from this source")
        parser.add_argument("--steps", metavar="A-B", help="only rollouts of these steps (7, 5-10, 5-, -10)")
        web = parser.add_argument_group("the review desk in a browser")
        web.add_argument("--web", action="store_true", help="serve the review desk instead of the terminal loop")
        web.add_argument("--port", type=int, default=8765, help="the desk's port (default 8765; 0: any free port)")
        web.add_argument("--host", default="127.0.0.1",
                         help="the address to listen on (default 127.0.0.1); any other needs a token")
        web.add_argument("--token", help="required on every request (as ?token=... once; the browser keeps it); "
                         "generated and printed when --host is not a loopback address")

    @staticmethod
    def run(args: argparse.Namespace) -> int:
        filters = QueueFilter(verdict=args.verdict, source=args.source, steps=parse_steps(args.steps),
                              problem_id=args.problem, only_unreviewed=args.only_unreviewed)
        author = author_name(args.author or os.environ.get("DISTIL_HUMAN_AUTHOR") or _login())
        if len(author) > MAX_AUTHOR:  # checked once, for both front ends, before anything is read
            given = "--author" if args.author else "DISTIL_HUMAN_AUTHOR" if os.environ.get("DISTIL_HUMAN_AUTHOR") \
                else "the login name"
            raise ConfigError(f"the reviewer's name ({given}) is {len(author):,} characters long; give one of at "
                              f"most {MAX_AUTHOR} with --author.")
        if args.web:
            from .web.serve import serve  # starlette and uvicorn: the optional `web` extra

            return serve(args.run_dir, db=args.db, author=author, host=args.host, port=args.port,
                         token=args.token, sort=args.sort, filters=filters)
        _tolerant_terminal()
        records, skipped = read_rollouts(args.run_dir)
        if skipped:
            print(skipped_note(skipped), file=sys.stderr)
        with CorrectionStore(args.db, read_only=False) as store:
            done = store.reviewed()
            found = len(queue_items(build_queue(records, done, args.sort, replace(filters, only_unreviewed=False))))
            items = queue_items(build_queue(records, done, args.sort, filters))
            which = f" of problem {args.problem!r}" if args.problem else ""
            if not items:
                left = f" ({found} already reviewed)" if found else ""
                print(f"Nothing to review: no failed rollout{which} in {args.run_dir}{left}.")
                return 0
            left_out = f", {found - len(items)} already reviewed left out" if found > len(items) else ""
            plural = "" if len(items) == 1 else "s"
            print(f"{len(items)} failed response{plural}{which} from {args.run_dir}{left_out}. "
                  f"Entries go to {store.path} as {author!r}; type ? for help.")
            try:
                ReviewSession(items, store, author=author, run_dir=args.run_dir,
                              checker=SolutionChecker(args.run_dir)).run()
            except KeyboardInterrupt:  # between two prompts; the session itself handles the rest
                print("\nStopped.")
        return 0


class CorrectionsCommand:
    """export or import human corrections as JSONL (one JSON object a line)"""

    @staticmethod
    def configure(parser: argparse.ArgumentParser) -> None:
        sub = parser.add_subparsers(dest="action", metavar="{export,import}", required=True)
        export = sub.add_parser("export", help="write the store's entries to FILE (atomically; - for standard "
                                               "output)")
        export.add_argument("file", metavar="FILE")
        export.add_argument("--db", help=DB_HELP)
        export.add_argument("--problem", metavar="ID", help="only this problem's entries")
        imp = sub.add_parser("import", help="validate FILE and add all its entries to the store, or none")
        imp.add_argument("file", metavar="FILE")
        imp.add_argument("--db", help=DB_HELP)

    @staticmethod
    def run(args: argparse.Namespace) -> int:
        if args.action == "export":
            # an existing store only (a mistyped --db must not write an empty backup over a good
            # one), and never written over by its own export
            with CorrectionStore(args.db, create=False) as store:
                if not _is_stdout(args.file) and os.path.exists(args.file) and os.path.samefile(args.file, store.path):
                    raise ConfigError(f"{args.file} is the store being exported; give another FILE.")
                count = export_jsonl(store, args.file, args.problem)
                where = "standard output" if args.file == "-" else args.file
                print(f"Exported {count} entries from {store.path} to {where}.",  # not into the entries
                      file=sys.stderr if _is_stdout(args.file) else sys.stdout)
            return 0
        entries = read_jsonl(args.file)  # a bad file is reported before a store is created for it
        with CorrectionStore(args.db, read_only=False) as store:
            added, same = store_entries(store, args.file, entries)
            already = f" ({same} already present)" if same else ""
            print(f"Imported {added} entries from {args.file} into {store.path}{already}.")
        return 0


def _is_stdout(path: str) -> bool:
    """Whether ``path`` is this process's standard output: ``-``, or any name that leads to it
    (``/dev/stdout``, ``/proc/self/fd/1``, a link to either)."""
    if path == "-":
        return True
    try:
        return os.path.samestat(os.stat(path), os.fstat(sys.stdout.fileno()))
    except (OSError, ValueError):  # no such file yet, or stdout has no descriptor
        return False


def _tolerant_terminal() -> None:
    """Read undecodable input bytes as surrogate escapes (the session turns them into U+FFFD and
    says so) and print what the terminal cannot show as escapes: an encoding mismatch between
    the terminal and the locale must never end a review with a traceback and lose the text."""
    for stream, errors in ((sys.stdin, "surrogateescape"), (sys.stdout, "backslashreplace")):
        reconfigure = getattr(stream, "reconfigure", None)
        if reconfigure is not None:
            reconfigure(errors=errors)


def _login() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return ""
