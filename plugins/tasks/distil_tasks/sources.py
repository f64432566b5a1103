"""Where a task's records come from, as tables of :class:`~distil_tasks.records.Record`.

``path`` may be

- a JSONL file (any extension but the ones below; one JSON object per line, blank lines
  skipped), whose records are placed by ``file:line``;
- a Parquet file (``.parquet``, read with pyarrow);
- a CSV or TSV file (``.csv``, ``.tsv``, read with pandas): every cell is the string the file
  holds (no type guessing turns ``3`` into ``3.0``) and only an empty cell is missing;
- a JSON file (``.json``): a list of JSON objects, or JSON Lines under that extension;
- a directory written by ``datasets``' ``save_to_disk``: a ``DatasetDict`` (one table per
  split, named by the split) or a single ``Dataset``;
- otherwise, a dataset name on the Hugging Face Hub (``owner/name``), read with
  ``load_dataset`` when the Hub can be reached or the dataset is in the local cache.

Table rows are placed by ``file row N``. pyarrow, pandas and datasets are optional (the tasks
plugin's ``datasets`` extra) and imported only when a path needs them, so JSON loading works
without them.
"""

from __future__ import annotations

import importlib
import json
import os
import re
import sys
from dataclasses import dataclass
from typing import Any, Iterable, Iterator, Optional

from .records import Record, RecordError

DELIMITERS = {".csv": ",", ".tsv": "\t"}
TABLE_SUFFIXES = {".parquet", ".jsonl", ".json", *DELIMITERS}
_HUB_NAME = re.compile(r"^[A-Za-z0-9][\w.-]*(/[A-Za-z0-9][\w.-]*)?$")
KINDS_HELP = ("a JSONL, Parquet, CSV or JSON file, a directory written by datasets' save_to_disk, "
              "or a Hugging Face Hub dataset name")


@dataclass
class Table:
    """The records of one file or one split; ``name`` is the split's name, or None for a file."""

    name: Optional[str]
    records: Iterable[Record]


def require(module: str, package: str, what: str) -> Any:
    """Import an optional library, or say which pip command installs it."""
    try:
        return importlib.import_module(module)
    except ImportError:
        raise ValueError(
            f"reading {what} needs the {package} package: pip install {package} "
            f"(or install the tasks plugin with its extra: pip install 'distil-tasks[datasets]')"
        ) from None


def open_tables(path: str, subset: Optional[str] = None) -> list[Table]:
    """The tables ``path`` holds: one for a file or a single dataset, one per split otherwise."""
    if not isinstance(path, str) or not path.strip():
        raise ValueError(f"path must be {KINDS_HELP} (got {path!r})")
    suffix = os.path.splitext(path)[1].lower()
    if os.path.isdir(path):
        return saved_dataset(path)
    if os.path.isfile(path):
        if suffix == ".parquet":
            return [Table(None, parquet_rows(path))]
        if suffix in DELIMITERS:
            return [Table(None, csv_rows(path, DELIMITERS[suffix]))]
        if suffix == ".json":
            return [Table(None, json_rows(path))]
        return [Table(None, jsonl_rows(path))]
    if suffix in TABLE_SUFFIXES or not _HUB_NAME.match(path):
        raise ValueError(f"task file {path!r} does not exist; give the path of {KINDS_HELP}")
    return hub_dataset(path, subset)


def jsonl_rows(path: str) -> Iterator[Record]:
    """Each non-blank line of a JSONL file; a line that is not a JSON object raises RecordError.

    Lines are decoded one at a time, so a byte that is not UTF-8 is named by its line. A UTF-8
    byte-order mark (as Windows Notepad and PowerShell write) opening the file is skipped."""
    with open(path, "rb") as fh:
        for number, raw in enumerate(fh, start=1):
            try:
                line = raw.decode("utf-8-sig" if number == 1 else "utf-8")
            except UnicodeDecodeError as exc:
                bad = exc.start + len(raw) - len(exc.object)  # exc.object lacks a byte-order mark
                raise RecordError(path, number, None, f"not valid UTF-8 (byte 0x{raw[bad]:02x} at byte "
                                                      f"{bad + 1} of the line); save the file as UTF-8") from None
            if not line.strip():
                continue
            data = parse_json(line, path, number)
            if not isinstance(data, dict):
                raise RecordError(path, number, None, f"a record must be a JSON object, not {type(data).__name__}")
            yield Record(path, number, data)


def parse_json(text: str, path: str, line: int) -> Any:
    """``json.loads`` of line ``line`` of ``path``, its every failure a RecordError there."""
    try:
        return json.loads(text)
    except (RecursionError, ValueError) as exc:
        raise json_error(exc, path, line) from None


def json_error(exc: Exception, path: str, line: Optional[int]) -> ValueError:
    """What ``json.loads`` failed on, placed at ``path:line`` (``line`` None: the whole file,
    placed by the decoder's line where it has one)."""
    if isinstance(exc, json.JSONDecodeError):
        # a line is parsed with its line ending, so an error at its end is read as line 2, column 1
        column = exc.colno if line is None or exc.lineno == 1 else len(exc.doc.split("\n", 1)[0].rstrip("\r")) + 1
        return RecordError(path, exc.lineno if line is None else line, None, f"not valid JSON ({exc.msg} at column {column})")
    if isinstance(exc, RecursionError):
        what = "not readable JSON: nested too deeply"
    else:  # json parses integers with int(), which refuses more than sys.get_int_max_str_digits() digits
        what = f"not readable JSON: an integer has more than {sys.get_int_max_str_digits()} digits; write it as a string"
    return RecordError(path, line, None, what) if line is not None else ValueError(f"{path}: {what}")


def json_rows(path: str) -> Iterator[Record]:
    """Each object of a JSON file holding a list of them (``file row N``), or its one object; a
    file of one object per line is read as JSONL, whatever its extension."""
    with open(path, "rb") as fh:
        raw = fh.read()
    try:
        text = raw.decode("utf-8-sig")  # a byte-order mark opening the file is skipped
    except UnicodeDecodeError as exc:
        bad = exc.start + len(raw) - len(exc.object)  # exc.object lacks a byte-order mark
        line = raw.count(b"\n", 0, bad) + 1
        raise RecordError(path, line, None, f"not valid UTF-8 (byte 0x{raw[bad]:02x}); save the file as UTF-8") from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        if exc.msg != "Extra data":  # extra data after the first value: one value per line, JSON Lines
            raise json_error(exc, path, None) from None
        yield from jsonl_rows(path)
        return
    except (RecursionError, ValueError) as exc:
        raise json_error(exc, path, None) from None
    if isinstance(data, dict):  # one record (JSON Lines of one line, or one object written out)
        yield Record(path, 1, data)
        return
    if not isinstance(data, list):
        raise ValueError(f"{path}: a JSON file must hold a list of records (JSON objects), not {type(data).__name__}; "
                         "or give one object per line (JSONL)")
    for row, item in enumerate(data):
        if not isinstance(item, dict):
            raise RecordError(path, row, None, f"a record must be a JSON object, not {type(item).__name__}", unit="row")
        yield Record(path, row, item, unit="row")


def parquet_rows(path: str) -> Iterator[Record]:
    """Each row of a Parquet file, read a batch at a time."""
    pq = require("pyarrow.parquet", "pyarrow", f"the Parquet file {path!r}")
    try:
        handle = pq.ParquetFile(path)
    except Exception as exc:  # pyarrow raises ArrowInvalid and OSError subclasses for a bad file
        raise ValueError(f"{path}: not a readable Parquet file ({exc})") from None
    row = 0
    for batch in handle.iter_batches(batch_size=1024):
        for data in batch.to_pylist():
            yield Record(path, row, data, unit="row")
            row += 1


def dataset_rows(dataset: Any, path: str, split: Optional[str] = None) -> Iterator[Record]:
    """Each row of a ``datasets.Dataset``; rows of a split are placed ``path (split) row N``."""
    where = f"{path} ({split})" if split else path
    for row, data in enumerate(dataset):
        yield Record(where, row, dict(data), unit="row")


def saved_dataset(path: str) -> list[Table]:
    """The splits of a ``save_to_disk`` directory (one table for a single ``Dataset``)."""
    datasets = require("datasets", "datasets", f"the directory {path!r}")
    try:
        loaded = datasets.load_from_disk(path)
    except FileNotFoundError as exc:
        raise ValueError(
            f"{path!r} is a directory but not one written by datasets' save_to_disk ({exc}); "
            f"give {KINDS_HELP}"
        ) from None
    if isinstance(loaded, datasets.DatasetDict):
        return [Table(name, dataset_rows(loaded[name], path, name)) for name in loaded]
    return [Table(None, dataset_rows(loaded, path))]


def csv_rows(path: str, delimiter: str) -> list[Record]:
    """Each row of a CSV or TSV file, its cells the strings the file holds: pandas' type
    guessing would write ``3`` as ``3.0`` in a column that also holds ``2.5`` (and an id as
    ``1.0`` in a column with a blank cell), and read ``NA`` or ``None`` as missing. Only an
    empty cell is missing."""
    kind = "TSV" if delimiter == "\t" else "CSV"
    pandas = require("pandas", "pandas", f"the {kind} file {path!r}")
    try:
        frame = pandas.read_csv(path, sep=delimiter, dtype=str, keep_default_na=False, na_values=[""])
    except ValueError as exc:  # pandas' ParserError, EmptyDataError and UnicodeDecodeError are ValueErrors
        raise ValueError(f"{path}: not readable as {kind} ({exc})") from None
    rows = frame.astype(object).where(frame.notna(), None).to_dict("records")
    return [Record(path, row, data, unit="row") for row, data in enumerate(rows)]


def hub_offline() -> bool:
    return any(os.environ.get(name, "").strip().lower() in ("1", "true", "yes", "on")
               for name in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE"))


def hub_dataset(name: str, subset: Optional[str]) -> list[Table]:
    """A Hub dataset's splits (from the local cache when the Hub is offline)."""
    datasets = require("datasets", "datasets", f"the Hub dataset {name!r}")
    local = f"{name!r} is not a local file or directory"
    try:
        loaded = datasets.load_dataset(name, subset)
    except OSError as exc:  # ConnectionError, and FileNotFoundError for an unknown name, are OSErrors
        if hub_offline():
            raise ValueError(
                f"{local}, and the Hugging Face Hub is offline (HF_HUB_OFFLINE=1) with no cached copy of it: "
                "give the path of a local file or save_to_disk directory, or unset HF_HUB_OFFLINE "
                "on a machine that can reach the Hub"
            ) from None
        if isinstance(exc, ConnectionError):
            raise ValueError(
                f"{local}, and the Hugging Face Hub could not be reached ({exc}): give the path of a "
                "local file or save_to_disk directory, or check the network"
            ) from None
        raise ValueError(f"{local}, and the Hub has no dataset of that name ({exc}); check the path") from None
    if isinstance(loaded, datasets.DatasetDict):
        return [Table(split, dataset_rows(loaded[split], name, split)) for split in loaded]
    return [Table(None, dataset_rows(loaded, name))]
