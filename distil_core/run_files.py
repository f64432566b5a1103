"""The files of a run directory, and how its growing logs are rotated and read back.

A run writes ``metrics.jsonl`` and ``eval.jsonl`` (a line per step or evaluation: small), and
``rollouts.jsonl`` and ``provenance.jsonl`` (a line per rollout or expert query: these grow with
the run). Once a growing log passes ``train.log_max_mb`` it is closed and compressed into a
numbered segment beside it (``rollouts.000001.jsonl.gz``, ``rollouts.000002.jsonl.gz``, ...) and
a new live file starts; only the newest ``train.log_keep_segments`` segments are kept, so a long
run's logs stay bounded. :func:`log_lines` reads a log back whole, segments first, so a reader
(the review desk, a resumed run) never needs to know whether it was rotated.

A rotation never loses or repeats a line, even when the process dies half way: the live file is
first renamed to an uncompressed segment (one atomic step), then compressed beside it through an
atomic write, and the uncompressed copy removed last; a reader that finds both takes the
compressed one, which exists only once complete.

Torch-free: plugins that read runs (``distil review``) use it without the training stack.
"""

from __future__ import annotations

import contextlib
import gzip
import json
import math
import os
import re
import shutil
import zlib
from typing import Any, Iterable, Iterator, Optional, Sequence

from distil_core.errors import ConfigError, DistilError
from distil_core.io import TEMPORARY_PREFIX, StagedWrites, atomic_file

GROWING_LOGS = ("rollouts.jsonl", "provenance.jsonl")
"""The logs that grow with the number of rollouts; these are rotated."""

STEP_LOGS = ("metrics.jsonl", "provenance.jsonl", "rollouts.jsonl", "eval.jsonl")
"""Every log keyed by step: a resumed run drops their lines past its checkpoint."""

TRACKER_DIRS = ("tensorboard", "trackio", "wandb", "mlruns")
"""Where the built-in trackers (``train.report_to``) write by default, inside the run directory."""

TRACKER_IDS = "trackers.json"
"""The trackers' own run ids (wandb, MLflow), which a resumed run logs on into."""

RUN_ENTRIES = ("config.yaml", "summary.json", *STEP_LOGS, "checkpoints", "final", *TRACKER_DIRS, TRACKER_IDS,
               "curves.png")
"""What a run writes into its directory (besides rotated segments), and ``distil plot``'s
default picture of it; ``--overwrite`` removes exactly these, from a directory that
:func:`holds_run`."""

RUN_CONFIG_HEADER = "# distil train: the config this run trains with (written by the run)\n"
"""The first line of the ``config.yaml`` a run writes, before anything else: a run stopped
before its first log still holds a run (:func:`holds_run`), unlike someone's own config.yaml."""

CHECKPOINT_NAME = re.compile(r"step-(\d+)\.pt")
"""A checkpoint's file name in ``checkpoints/`` (match it whole): its step is zero-padded to six
digits and may have more."""

_SEGMENT = re.compile(r"^(?P<stem>.+)\.(?P<index>\d{6})\.jsonl(?P<gz>\.gz)?$")


def holds_run(run_dir: str) -> bool:
    """Whether ``run_dir`` holds (part of) a run: a step log or one of its segments,
    ``summary.json``, a checkpoint, or a config.yaml a run wrote. A run's other names (``config.yaml``, ``final/``,
    ``checkpoints/``, the trackers' folders, ``curves.png``) are common enough that a user's own
    files carry them, so alone they are not a run: ``--overwrite`` must not take a folder of
    someone's own files for one (:func:`run_paths` lists what is there)."""
    if not os.path.isdir(run_dir):
        return False
    if any(os.path.lexists(os.path.join(run_dir, name)) for name in (*STEP_LOGS, "summary.json")):
        return True
    if any(segments(run_dir, name) for name in GROWING_LOGS) or _run_config(run_dir):
        return True
    try:
        saved = os.listdir(os.path.join(run_dir, "checkpoints"))
    except OSError:  # absent, or not a directory
        return False
    return any(name == "latest" or CHECKPOINT_NAME.fullmatch(name) for name in saved)


def check_resumable(run_dir: str) -> None:
    """A ConfigError when ``run_dir`` holds no run to ``--resume``: no such directory (a mistyped
    ``--output-dir``), or one without a step log, summary.json, checkpoint or run's config.yaml.
    Checked before anything is read, built or created: a resume of nothing must not set up a new
    run (and pretrain a tiny base) to say so minutes later, nor leave the directory behind."""
    if not os.path.isdir(run_dir):
        what = "not a directory" if os.path.lexists(run_dir) else "no such directory"
        raise ConfigError(f"--resume: {run_dir!r} is not a run directory ({what}), so there is no run to continue; "
                          "give the --output-dir of the run to resume, or leave --resume out to start a new run.")
    if not holds_run(run_dir):
        raise ConfigError(f"--resume: {run_dir!r} holds no run (no step log, summary.json, checkpoint or run's "
                          "config.yaml), so there is nothing to continue; leave --resume out to start a new run "
                          "there, or give the --output-dir of the run to resume.")


def run_paths(run_dir: str) -> list[str]:
    """The paths in ``run_dir`` that a run wrote: its files, folders, log segments and the
    :func:`temporaries` of writes a crash cut short."""
    found = [os.path.join(run_dir, name) for name in RUN_ENTRIES if os.path.lexists(os.path.join(run_dir, name))]
    for name in GROWING_LOGS:
        found += segments(run_dir, name)
    return found + temporaries(run_dir)


def written_paths(run_dir: str) -> list[str]:
    """:func:`run_paths` but the leftovers of a write a kill cut short: the :func:`temporaries`,
    and a ``checkpoints/`` holding nothing else. A run made those and reads none of them, and they
    are no one's own files, so alone they do not stop a new run there (which removes them)."""
    leftovers = set(temporaries(run_dir))
    folder = os.path.join(run_dir, "checkpoints")
    try:
        if os.path.isdir(folder) and all(os.path.join(folder, n) in leftovers for n in os.listdir(folder)):
            leftovers.add(folder)
    except OSError:
        pass
    return [path for path in run_paths(run_dir) if path not in leftovers]


def _run_config(run_dir: str) -> bool:
    """Whether ``run_dir``'s config.yaml is one a run wrote (it begins with :data:`RUN_CONFIG_HEADER`)."""
    try:
        with open(os.path.join(run_dir, "config.yaml"), encoding="utf-8", errors="replace") as fh:
            return fh.readline() == RUN_CONFIG_HEADER
    except OSError:  # absent, a directory, unreadable: not a run's
        return False


def run_file_at(path: str, run_dir: str) -> Optional[str]:
    """The file or folder of the run in ``run_dir`` that ``path`` is, or lies inside, when it is
    one the run writes (a log, ``config.yaml``, a checkpoint, ``final/``; ``curves.png`` is
    ``distil plot``'s own default): an output a command writes must never replace it."""
    target = os.path.realpath(path)
    names = [os.path.join(run_dir, name) for name in RUN_ENTRIES if name != "curves.png"]
    for entry in names + [p for name in GROWING_LOGS for p in segments(run_dir, name)]:
        own = os.path.realpath(entry)
        if target == own or target.startswith(own + os.sep):
            return entry
    return None


def refuse_run_files(path: str, run_dirs: Sequence[str], flag: str, advice: str) -> None:
    """Raise a ConfigError naming ``flag`` when the output ``path`` is a file of one of
    ``run_dirs`` (:func:`run_file_at`): checked before anything is read, so a command that would
    replace a run's config.yaml with a plot or with results (which may still parse) does nothing."""
    for run_dir in run_dirs:
        own = run_file_at(path, run_dir)
        if own is not None:
            raise ConfigError(f"{flag} {path!r} is {own}, which the run writes: the output would replace it. {advice}")


def temporaries(run_dir: str) -> list[str]:
    """The unfinished atomic writes in ``run_dir`` and its ``checkpoints/``: left by a run killed
    while writing (a checkpoint, the final model), never read, and as large as what they held."""
    found = []
    for directory in (run_dir, os.path.join(run_dir, "checkpoints")):
        try:
            names = os.listdir(directory)
        except OSError:  # absent, or not a directory: nothing of a run there
            continue
        found += [os.path.join(directory, n) for n in sorted(names) if n.startswith(TEMPORARY_PREFIX)]
    return found


def remove_temporaries(run_dir: str) -> None:
    """Take away :func:`temporaries` (a resumed run's first act: they belong to a dead process)."""
    for path in temporaries(run_dir):
        if os.path.isdir(path) and not os.path.islink(path):
            shutil.rmtree(path, ignore_errors=True)
        else:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)


def remove_run(run_dir: str) -> None:
    """Take away everything a run wrote into ``run_dir``; other files there stay."""
    for path in run_paths(run_dir):
        if not os.path.lexists(path):  # inside a folder removed before it (checkpoints/.tmp-*)
            continue
        if os.path.isdir(path) and not os.path.islink(path):
            shutil.rmtree(path)
        else:
            os.unlink(path)


def segments(run_dir: str, name: str) -> list[str]:
    """The rotated segments of log ``name`` (e.g. ``rollouts.jsonl``), oldest first."""
    return [path for _, path in _segment_files(run_dir, name)]


def _segment_files(run_dir: str, name: str) -> list[tuple[int, str]]:
    """(index, path) of each segment; where a crash left a segment both plain and compressed,
    the compressed one (complete, since it was written atomically) and the plain one both."""
    stem = name[:-len(".jsonl")]
    found: list[tuple[int, str]] = []
    try:
        entries = os.listdir(run_dir)
    except OSError:
        return []
    for entry in entries:
        match = _SEGMENT.match(entry)
        if match and match["stem"] == stem:
            found.append((int(match["index"]), os.path.join(run_dir, entry)))
    return sorted(found)


def _readable_segments(run_dir: str, name: str) -> list[str]:
    """One path per segment index, the compressed copy preferred."""
    chosen: dict[int, str] = {}
    for index, path in _segment_files(run_dir, name):
        if index not in chosen or path.endswith(".gz"):
            chosen[index] = path
    return [chosen[i] for i in sorted(chosen)]


def log_exists(run_dir: str, name: str) -> bool:
    return os.path.exists(os.path.join(run_dir, name)) or bool(_segment_files(run_dir, name))


def json_line(line: str) -> Any:
    """The value of one line of a JSON log; a line that is not JSON is a ValueError saying why
    (``not a JSON line (...)``), which the readers place at ``file:line``. Deep nesting and
    integers too long for ``int()`` are such lines too, not a RecursionError or a crash."""
    try:
        return json.loads(line)
    except json.JSONDecodeError as exc:
        raise ValueError(f"not a JSON line ({exc.msg})") from None
    except RecursionError:
        raise ValueError("not a JSON line (nested too deeply)") from None
    except ValueError:  # json reads integers with int(), which refuses more than 4300 digits
        raise ValueError("not a JSON line (an integer too long to read)") from None


def step_record(line: str) -> dict[str, Any]:
    """A line of a step log as its record: a JSON object with a numeric ``step`` whose numbers a
    float can hold. Anything else is a ValueError saying what the line is instead; the readers
    (resume, plot, bench) place it at ``file:line``."""
    if "\ufffd" in line:  # what a byte that is not UTF-8 reads as (the logs are written as ASCII JSON)
        raise ValueError("not UTF-8 text")
    record = json_line(line)
    step = record.get("step") if isinstance(record, dict) else None
    if isinstance(step, bool) or not isinstance(step, (int, float)):
        raise ValueError('not a step record (a JSON object with a numeric "step")')
    if isinstance(step, float) and not math.isfinite(step):  # JSON's NaN and Infinity: no step to order by
        raise ValueError(f'not a step record ("step" is {step}, not a finite number)')
    huge = next((key for key, value in record.items() if not fits_a_float(value)), None)
    if huge is not None:
        raise ValueError(f"{huge!r} is an integer too large for a float")
    return record


def step_records(lines: Iterable[tuple[str, int, str]], *, finished: bool, damaged: str) -> Iterator[dict[str, Any]]:
    """The records of a step log's ``(file, line number, text)`` lines, blank lines skipped.

    The one rule every reader (resume, plot, bench) applies: a line that is not a step record is
    a DistilError naming ``file:line``, followed by ``damaged`` (what to do about it), except an
    unfinished last line (no newline yet), which is a run still writing it or the tail of a
    write a crash cut short: skipped, since the next read, or the resumed run, sees it whole. A
    ``finished`` run writes nothing more, so there such a line is damage too (a cut file)."""
    held = None
    for item in lines:
        if held is not None:
            yield from _record(*held, damaged)
        held = item
    if held is None:
        return
    path, number, line = held
    if finished or line.endswith("\n"):
        yield from _record(path, number, line, damaged)
        return
    try:
        record = step_record(line) if line.strip() else None
    except ValueError:
        return  # being written
    if record is not None:
        yield record


def _record(path: str, number: int, line: str, damaged: str) -> Iterator[dict[str, Any]]:
    if not line.strip():
        return
    try:
        yield step_record(line)
    except ValueError as exc:
        raise DistilError(f"{path}:{number}: {exc}; {damaged}") from None


def fits_a_float(value: Any) -> bool:
    """False for an integer past float's range (JSON allows any size; every reader converts)."""
    if isinstance(value, bool) or not isinstance(value, int):
        return True
    try:
        float(value)
    except OverflowError:
        return False
    return True


def log_lines(run_dir: str, name: str) -> Iterator[tuple[str, int, str]]:
    """Every line of log ``name`` in the order written: (file, line number, text), rotated
    segments first, then the live file. Bytes that are not UTF-8 read as U+FFFD."""
    paths = _readable_segments(run_dir, name)
    live = os.path.join(run_dir, name)
    if os.path.exists(live):
        paths.append(live)
    for path in paths:
        opener = gzip.open if path.endswith(".gz") else open
        try:
            with opener(path, "rt", encoding="utf-8", errors="replace") as fh:
                for number, line in enumerate(fh, 1):
                    yield path, number, line
        except (OSError, EOFError, zlib.error) as exc:  # gzip.BadGzipFile is an OSError
            what = "cut short" if isinstance(exc, EOFError) else exc.strerror or str(exc) or type(exc).__name__
            raise DistilError(f"{path}: log {name} cannot be read ({what}); the file is damaged: move it aside "
                              "(a rotated segment holds only older lines) or restore it, then try again.") from None


def rotate_if_large(run_dir: str, name: str, max_bytes: int, keep: Optional[int], *, mode: int) -> Optional[str]:
    """Compress log ``name`` into its next segment once it holds ``max_bytes`` or more, then
    drop the oldest segments past ``keep`` (None keeps all). The segment's path, or None."""
    live = os.path.join(run_dir, name)
    try:
        if os.path.getsize(live) < max_bytes:
            return None
    except OSError:
        return None
    existing = _segment_files(run_dir, name)
    index = (existing[-1][0] + 1) if existing else 1
    plain = os.path.join(run_dir, f"{name[:-len('.jsonl')]}.{index:06d}.jsonl")
    os.replace(live, plain)  # the live file is a segment now, in one step
    finish_rotation(plain, mode=mode)
    if keep is not None:
        readable = _readable_segments(run_dir, name)
        for path in readable[:max(0, len(readable) - keep)]:
            _remove_segment(path)
    return plain + ".gz"


def finish_rotation(plain: str, *, mode: int) -> None:
    """Compress an uncompressed segment beside itself, atomically, and remove the plain copy."""
    with open(plain, "rb") as src, atomic_file(plain + ".gz", mode=mode) as out:
        with gzip.GzipFile(fileobj=out, mode="wb", mtime=0) as gz:
            shutil.copyfileobj(src, gz)
    os.unlink(plain)


def _remove_segment(path: str) -> None:
    for candidate in {path, path[:-3] if path.endswith(".gz") else path + ".gz"}:
        if os.path.exists(candidate):
            os.unlink(candidate)


def rewrite_segments(run_dir: str, name: str, keep_line, *, mode: int, staged: StagedWrites) -> None:
    """Stage the rewrite of each rotated segment of ``name`` keeping only the lines
    ``keep_line(text)`` accepts (a resumed run drops what came after its checkpoint); emptied
    segments go. Nothing changes until ``staged`` commits (:func:`~distil_core.io.staged_writes`)."""
    for path in _readable_segments(run_dir, name):
        opener = gzip.open if path.endswith(".gz") else open
        with opener(path, "rt", encoding="utf-8", errors="replace") as fh:
            lines = fh.readlines()
        kept = [line for line in lines if keep_line(line)]
        if len(kept) == len(lines):
            continue
        plain, packed = (path[:-3], path) if path.endswith(".gz") else (path, path + ".gz")
        if not kept:  # the segment goes, both its copies where a rotation cut short left two
            staged.remove(plain)
            staged.remove(packed)
            continue
        staged.write(packed, gzip.compress("".join(kept).encode("utf-8"), mtime=0), mode=mode)
        if path == plain:  # a rotation cut short left it uncompressed: the compressed copy replaces it
            staged.remove(plain)


__all__ = ["GROWING_LOGS", "STEP_LOGS", "TRACKER_DIRS", "TRACKER_IDS", "RUN_ENTRIES", "RUN_CONFIG_HEADER", "CHECKPOINT_NAME", "holds_run", "check_resumable", "step_records", "run_file_at", "refuse_run_files", "run_paths", "written_paths", "remove_run", "temporaries", "remove_temporaries", "segments",
           "log_exists", "json_line", "step_record", "fits_a_float", "log_lines", "rotate_if_large", "finish_rotation", "rewrite_segments"]
