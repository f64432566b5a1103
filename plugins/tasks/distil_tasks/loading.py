"""The one loading path: tables of records → problems → a train and a test split.

Split rule, first that applies:

1. ``test_path``: ``path`` is the train split and ``test_path`` the test split.
2. ``split_key``: a column naming each record's split; records whose value is ``split``
   (default ``train``) train, those whose value is ``test_split`` (default ``test``) are held
   out, others are left out. Values compare as text, so ``split: 1`` selects a column of
   integers ``1`` (or of strings ``"1"``).
3. A dataset with named splits (a ``DatasetDict`` directory, a Hub dataset): the split named
   ``split`` trains and the one named ``test_split`` is held out when there is one.
4. Otherwise the held-out share: records are ordered by the SHA-256 of their problem id and the
   first ``round(n * test_fraction)`` of them (at least one when there are two or more records
   and ``test_fraction > 0``) form the test split, with every other record of the same prompt
   (a duplicated question under another id, or a file without ids) so that no test prompt is
   also trained on. The rule depends only on the ids and prompts, not on the order of the records.

A test split given by ``test_path``, ``split_key`` or a named split must be held out: a prompt in
both splits is refused, since evaluating on it would measure what was trained on.
"""

from __future__ import annotations

import hashlib
from numbers import Real
from typing import Any, Callable, Iterable, Optional, Sequence

from distil_core import Problem

from .records import Record, prompt_id, prompt_text
from .sources import Table, open_tables

Converter = Callable[[Record], Problem]


def load_records(records: Iterable[Record], convert: Converter, what: str) -> list[Problem]:
    """Every record converted; ids must be unique within ``what`` (a file or a split). An id-less
    record's id comes from its prompt, so further records of the same prompt are told apart by
    their order (``p-…-2``); the split keeps every record of a prompt together, so that order
    moves none of them across it."""
    problems: list[Problem] = []
    seen: dict[str, str] = {}
    copies: dict[str, int] = {}
    for record in records:
        problem = convert(record)
        if problem.id in seen and problem.id == prompt_id(problem.prompt):
            copies[problem.id] = copies.get(problem.id, 1) + 1  # another id-less record of the same prompt
            problem = problem.model_copy(update={"id": f"{problem.id}-{copies[problem.id]}"})
        if problem.id in seen:
            raise record.error(None, f"duplicate problem id {problem.id!r} (first at {seen[problem.id]})")
        seen[problem.id] = f"{record.unit} {record.line}"
        problem.metadata.setdefault("source", record.where)
        problems.append(problem)
    if not problems:
        raise ValueError(f"task file {what!r} holds no records")
    return problems


def split_by_id(problems: Sequence[Problem], test_fraction: float) -> dict[str, list[Problem]]:
    """The documented split rule: order by SHA-256 of the id, the first share is the test split,
    joined by the records that repeat one of its prompts: with them in train, evaluating would
    measure recall (as :func:`held_out` refuses for a given test split)."""
    if not 0.0 <= test_fraction < 1.0:
        raise ValueError(f"test_fraction must be in [0, 1) (got {test_fraction})")
    ordered = sorted(problems, key=lambda p: hashlib.sha256(p.id.encode("utf-8")).hexdigest())
    n_test = round(len(ordered) * test_fraction)
    if test_fraction > 0 and len(ordered) >= 2:
        n_test = min(max(n_test, 1), len(ordered) - 1)
    test_prompts = {prompt_key(p) for p in ordered[:n_test]}
    split = {
        "train": [p for p in problems if prompt_key(p) not in test_prompts],
        "test": [p for p in problems if prompt_key(p) in test_prompts],
    }
    if n_test and not split["train"]:
        raise ValueError(f"test_fraction {test_fraction} leaves no train problem: every record repeats a prompt of "
                         "the test split; give distinct prompts, or a test_path to evaluate on")
    return split


def check_option(name: str, value: Any, kinds: tuple[type, ...], what: str) -> Any:
    """An option as given, or a ValueError naming it: values from a config are checked here,
    before anything compares or computes with them."""
    if (isinstance(value, bool) and bool not in kinds) or not isinstance(value, kinds):
        raise ValueError(f"options.{name} must be {what} (got {value!r}, a {type(value).__name__})")
    return value


def split_name(name: str, value: Any) -> str:
    """A split's name or ``split_key`` value, as text: a config's ``1`` or ``true`` names the
    column values ``1`` and ``True``."""
    return str(check_option(name, value, (str, int, bool), "a split name (a string, or an integer or boolean "
                                                           "value of options.split_key's column)"))


def load_splits(
    path: str,
    convert: Converter,
    *,
    test_path: Optional[str] = None,
    test_fraction: float = 0.2,
    split: str = "train",
    test_split: str = "test",
    split_key: Optional[str] = None,
    subset: Optional[str] = None,
) -> dict[str, list[Problem]]:
    """``{"train": [...], "test": [...]}`` from ``path`` by the split rule of this module."""
    check_option("test_fraction", test_fraction, (Real,), "a number in [0, 1)")
    if not 0.0 <= test_fraction < 1.0:
        raise ValueError(f"options.test_fraction must be in [0, 1) (got {test_fraction})")
    for name, value in (("test_path", test_path), ("split_key", split_key), ("subset", subset)):
        check_option(name, value, (str, type(None)), "a string")
    split, test_split = split_name("split", split), split_name("test_split", test_split)
    if split == test_split:
        raise ValueError(f"options.split and options.test_split must differ (both {split!r})")
    tables = open_tables(path, subset)
    if split_key:
        return by_column(path, tables, convert, split_key, split, test_split)
    named = {t.name: t for t in tables if t.name is not None}
    if named and split not in named:
        raise ValueError(f"{path!r} has the splits {sorted(named)}; set options.split to one of them (got {split!r})")
    train_table = named[split] if named else tables[0]
    train = load_records(train_table.records, convert, path)
    if test_path is not None:
        test = load_whole(test_path, convert, test_split, subset)
        return held_out(train, test, "test_path", "path")
    if test_split in named:
        return held_out(train, load_records(named[test_split].records, convert, f"{path} ({test_split})"),
                        f"{path!r} ({test_split})", f"({split})")
    return split_by_id(train, test_fraction)


def held_out(train: list[Problem], test: list[Problem], test_from: str, train_from: str) -> dict[str, list[Problem]]:
    """The two splits, refused when a test problem is also a train problem (the same prompt):
    evaluating on it would measure recall, not what was learned. Prompts, not ids, decide:
    splits are often numbered independently (ids 1, 2, … in each file)."""
    seen = {prompt_key(p): p.id for p in train}
    shared = [(p.id, seen[prompt_key(p)]) for p in test if prompt_key(p) in seen]
    if shared:
        problems = "problem" if len(shared) == 1 else "problems"
        test_id, train_id = shared[0]
        raise ValueError(f"{test_from} shares {len(shared)} {problems} with {train_from}: the same prompt (e.g. "
                         f"test {test_id!r} is train {train_id!r}); the test split must be held out: drop those "
                         "records from one split")
    return {"train": train, "test": test}


def prompt_key(problem: Problem) -> str:
    """What makes two problems the same problem: the prompt (:func:`~distil_tasks.records.prompt_text`)."""
    return prompt_text(problem.prompt)


def load_whole(path: str, convert: Converter, prefer: str, subset: Optional[str]) -> list[Problem]:
    """A test file: its one table, or its split named ``prefer``."""
    tables = open_tables(path, subset)
    named = {t.name: t for t in tables if t.name is not None}
    if named and prefer not in named:
        raise ValueError(f"{path!r} has the splits {sorted(named)}; set options.test_split to one of them (got {prefer!r})")
    return load_records((named[prefer] if named else tables[0]).records, convert, path)


def by_column(
    path: str, tables: list[Table], convert: Converter, key: str, split: str, test_split: str
) -> dict[str, list[Problem]]:
    """Split by the value each record holds under ``key``, compared as text (see
    :func:`split_name`); a null value names no split."""
    groups: dict[str, list[Record]] = {split: [], test_split: []}
    values: set[str] = set()
    for table in tables:
        for record in table.records:
            if key not in record.data:
                raise record.error(key, f"missing; options.split_key needs every record's split (keys: {sorted(record.data)})")
            value: Any = record.data[key]
            values.add("null" if value is None else repr(str(value)))
            if value is not None and str(value) in groups:
                groups[str(value)].append(record)
    for name in (split, test_split):
        if not groups[name]:
            raise ValueError(
                f"{path!r}: no record has {key} = {name!r} (values found: {', '.join(sorted(values)) or 'none'}); "
                f"set options.split and options.test_split to the values of the {key!r} column"
            )
    return held_out(load_records(groups[split], convert, f"{path} ({key}={split})"),
                    load_records(groups[test_split], convert, f"{path} ({key}={test_split})"),
                    f"{path!r} ({key}={test_split})", f"{key}={split}")
