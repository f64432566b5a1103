"""The ``dataset`` task: any file or ``datasets`` dataset whose records hold a prompt and an
answer (or code tests), with the keys named in the options.

    task: {name: dataset, options: {path: data/qa.jsonl, prompt_key: question, answer_key: target}}

It is the generic form of the suites' fixed formats (each format is a
:class:`~distil_tasks.fields.Preset` of the same keys and loading path), for data that is in
none of them. What ``path`` may be is in :mod:`distil_tasks.sources`, the split rule in
:mod:`distil_tasks.loading`, the keys in :mod:`distil_tasks.fields`.
"""

from __future__ import annotations

from typing import Any, Optional, Sequence

from distil_core import Problem

from .fields import Fields
from .loading import check_option, load_splits

FITS = {
    "answer": "verifier math_answer (or exact_match) with feedback math_steps (or answer_check)",
    "tests": "verifier code_exec with feedback code_exec",
}
"""What grades and explains each kind of reference (see :mod:`distil_tasks.fields`)."""


class DatasetTask:
    """Problems from ``path``, one per record.

    Keys: ``prompt_key`` (default ``prompt``: a string or chat messages), then ``answer_key``
    (default ``answer``) or ``tests_key`` (code tests), and optionally ``system_prompt_key``,
    ``solution_key`` (a worked solution or, with tests, a known-good program: what the tiny base
    learns to write), ``id_key`` (default: ``id`` when present, else one made from the prompt) and
    ``metadata_keys`` (copied into the problem's metadata).
    Splits: ``test_path``, ``split_key`` (a column naming each record's split), ``split`` and
    ``test_split`` (the split names, or the column's values; default ``train``/``test``), else
    ``test_fraction`` held out by id. ``subset``: the configuration of a Hub dataset.
    """

    name = "dataset"

    def __init__(
        self,
        path: Optional[str] = None,
        prompt_key: str = "prompt",
        answer_key: Optional[str] = None,
        tests_key: Optional[str] = None,
        system_prompt_key: Optional[str] = None,
        solution_key: Optional[str] = None,
        id_key: Optional[str] = None,
        metadata_keys: Sequence[str] = (),
        split: str = "train",
        test_split: str = "test",
        split_key: Optional[str] = None,
        test_path: Optional[str] = None,
        test_fraction: float = 0.2,
        subset: Optional[str] = None,
    ):
        if not path:
            raise ValueError("dataset: set options.path to a JSONL, Parquet, CSV or JSON file, a save_to_disk "
                             "directory or a Hub dataset name")
        check_option("prompt_key", prompt_key, (str,), "a key of the records")
        for name, value in (("answer_key", answer_key), ("tests_key", tests_key), ("system_prompt_key", system_prompt_key),
                            ("solution_key", solution_key), ("id_key", id_key)):
            check_option(name, value, (str, type(None)), "a key of the records")
        if isinstance(metadata_keys, str):
            metadata_keys = (metadata_keys,)
        check_option("metadata_keys", metadata_keys, (list, tuple), "a list of keys of the records")
        for key in metadata_keys:
            check_option("metadata_keys", key, (str,), "a list of keys of the records")
        if answer_key and tests_key:
            raise ValueError("dataset: set options.answer_key or options.tests_key, not both "
                             "(an answer is checked as text, tests are run as code)")
        self.fields = Fields(
            prompt_key=prompt_key,
            answer_key=None if tests_key else (answer_key or "answer"),
            tests_key=tests_key,
            system_prompt_key=system_prompt_key,
            solution_key=solution_key,
            id_keys=(id_key or "id",),
            metadata_keys=tuple(metadata_keys),
            id_required=id_key is not None,
            hint=True,
        )
        self.kind = self.fields.kind
        self.source = path
        self._splits = load_splits(path, self.fields.problem, test_path=test_path, test_fraction=test_fraction,
                                   split=split, test_split=test_split, split_key=split_key, subset=subset)
        if not self._splits["train"]:
            raise ValueError(f"dataset: {path!r} leaves no problem to train on; lower options.test_fraction")

    @property
    def fits(self) -> str:
        """The verifier and feedback that grade this dataset's references."""
        return FITS[self.kind]

    def problems(self, split: str) -> list[Problem]:
        """A split's problems; the test split may be empty (one record, ``test_fraction: 0``): a
        run that evaluates on held-out train problems (``eval.split: validation``) needs none, and
        one that needs them is told so where the evaluation problems are chosen."""
        if split not in self._splits:
            raise ValueError(f"dataset: unknown split {split!r}; use 'train' or 'test'")
        return list(self._splits[split])

    def answer_text(self, problem: Problem) -> Any:
        """What the tiny base learns to write: the answer, or for tests the known-good program
        (None without ``solution_key``: such a problem teaches the base nothing)."""
        if self.kind == "answer":
            return str(problem.reference)
        return problem.metadata.get("solution")
