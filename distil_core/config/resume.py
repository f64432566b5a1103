"""What a resumed run may change: how it is run, never what it trains.

A checkpoint holds the optimizer's and the schedule's own state (the learning rate, the betas),
the policy trained on one task with one method and one expert. Resuming it under another
``optim.lr``, ``method`` or ``task.options`` would train on with the old values while
``config.yaml`` claimed the new ones, or compare a "before" on one task with an "after" on
another. So ``--resume`` compares the config it is given with the config the checkpoint was
trained with (every checkpoint records it, :func:`trained_record`) and refuses any difference
outside :data:`RESUMABLE`, naming each key. ``config.yaml`` is the run's copy for people to read:
compared with it, an edit of that file would pass as the run's own config. A checkpoint written
before the record existed is compared with ``config.yaml``, as it was then.

A narrower list, :data:`WATCHING` (how a run is logged, saved and tracked), says when two
finished runs are the same result: what ``distil bench`` may reuse (:func:`result_changes`).
"""

from __future__ import annotations

import os
from typing import Any, Optional

from distil_core.config.diff import differences
from distil_core.config.loading import SUMMED_METHODS, as_saved_then, saved_config, shown
from distil_core.config.sections import LossConfig, RunConfig, method_expert_temperature
from distil_core.errors import ConfigError
from distil_core.redaction import SECRET_NAME, redacted

WATCHING = (
    "train.output_dir", "train.progress", "train.save_every", "train.log_every", "train.log_rollouts",
    "train.log_rollouts_every", "train.log_max_mb", "train.log_keep_segments", "train.report_to",
    "train.tracker_options", "train.log_rollout_table_every",
)
"""Keys (and whole sections below them) that change how a run is watched and kept, never what
it computes: where it is written, how often it logs and saves, its rollout logs and trackers.
Two finished runs that differ only here (or in a secret) are the same run, so ``distil bench``
reuses one for the other: a report asked for again with a tracker on, or with the rollouts
logged, does not train every run again."""

RESUMABLE = WATCHING + (
    "train.steps", "train.eval_every", "train.max_expert_failed_fraction", "train.max_nonfinite_steps",
    "train.parallel", "model.device",
    "rollout.server.base_url", "rollout.server.api_key_env", "rollout.server.timeout_s",
    "rollout.server.max_concurrency", "rollout.server.retries",
)
"""Keys (and whole sections below them) a resumed run may change: beside :data:`WATCHING`, its
length, how often it evaluates, its guards, the device and how the ranks share the policy
(checkpoints hold the whole policy: ddp and fsdp resume each other), and how the rollout server
is reached. Secrets (keys :data:`~distil_core.redaction.SECRET_NAME` matches) may change too: a
rotated API key trains the same run. These change what a finished run's results would be (a
longer run, a curve read at other steps), so a bench compares them (:func:`result_changes`)."""


FUTURE_CREDIT_KEYS = ("future_credit", "future_cost", "stop_credit", "credit_floor", "baseline", "gamma",
                      "future_reduce", "reward_weight", "reward_decay")
"""The ``loss`` keys only DistIL's future credit reads (methods in ``SUMMED_METHODS``)."""


def as_trained(config: RunConfig) -> dict[str, Any]:
    """``config`` as a run trains with it, for comparing two runs: its JSON dump with an unset
    ``loss.expert_temperature`` replaced by the method's τ, so that a run saved with the τ
    written out and one that leaves it to the method compare equal when they train alike; and,
    for a method without future credit, :data:`FUTURE_CREDIT_KEYS` at today's defaults, since it
    never reads them: a JSD or GRPO run saved before a default of DistIL's changed is still the
    same run (resumed, or reused by a bench)."""
    data = config.model_dump(mode="json")
    if data["loss"]["expert_temperature"] is None:
        data["loss"]["expert_temperature"] = method_expert_temperature(config.method)
    if config.method not in SUMMED_METHODS:
        defaults = LossConfig().model_dump(mode="json")
        data["loss"].update({key: defaults[key] for key in FUTURE_CREDIT_KEYS})
    return data


def resume_changes(saved: RunConfig, given: RunConfig) -> list[tuple[str, Any, Any]]:
    """``(key, saved value, given value)`` for every leaf that differs and may not change."""
    return [change for change in differences(as_trained(saved), as_trained(given)) if not _resumable(change[0])]


def result_changes(saved: RunConfig, given: RunConfig, *, watching: bool = False) -> list[tuple[str, Any, Any]]:
    """``(key, saved value, given value)`` for every leaf where a finished run under ``saved``
    would not be the run ``given`` asks for: every difference outside :data:`WATCHING` and the
    secrets. With ``watching``, the differences inside :data:`WATCHING` instead: what a reused
    run was not logged, saved or tracked with. Both sides as :func:`trained_record` gives them,
    since the values go into messages: a secret (a key's, or one inside an address) never shows."""
    changes = differences(trained_record(saved), trained_record(given))
    if watching:
        return [change for change in changes if _under(change[0], WATCHING)]
    return [change for change in changes if not _listed(change[0], WATCHING)]


def trained_record(config: RunConfig) -> dict[str, Any]:
    """What a checkpoint records of the config that trained it: :func:`as_trained`, with the values
    of secrets hidden (checkpoints travel between people; a secret may change on resume anyway)."""
    return redacted(as_trained(config))


def recorded_changes(trained: dict[str, Any], given: RunConfig) -> list[tuple[str, Any, Any]]:
    """:func:`resume_changes` against a checkpoint's :func:`trained_record`. The record is read as a
    config first, so keys a later version added compare at their defaults, or at the value older
    runs trained with where the default changed (:func:`~distil_core.config.loading.as_saved_then`); one this version
    cannot read is compared as it stands (a key it lacks is then a change, never ignored)."""
    try:
        saved = trained_record(RunConfig.model_validate(as_saved_then(trained)))
    except ValueError:  # pydantic's ValidationError
        saved = trained
    return [change for change in differences(saved, trained_record(given)) if not _resumable(change[0])]


def check_resume_config(run_dir: str, given: RunConfig, trained: Optional[dict[str, Any]] = None,
                        checkpoint: str = "") -> None:
    """Refuse to resume ``run_dir`` under ``given`` where it changes what the run trains.

    ``trained`` is the config ``checkpoint`` records (:func:`trained_record`), what the resumed
    weights and optimizer state were trained with: compared with that, an edited config.yaml is
    named as such. Without a record (a checkpoint from an earlier version, or none) the run's
    config.yaml is compared. A run directory without a ``config.yaml`` is then let through: the
    caller chose the config (the CLI refuses to guess one). A ``config.yaml`` that cannot be read is
    a ConfigError naming it.
    """
    path = os.path.join(run_dir, "config.yaml")
    try:
        saved = saved_config(run_dir)
    except ConfigError as exc:
        raise ConfigError(f"{exc}, so --resume cannot tell whether the run would change; restore it, or start "
                          "a new run.") from None
    if trained is not None:
        changes = recorded_changes(trained, given)
        if changes:
            raise ConfigError(_changed(run_dir, changes, f"the config its checkpoint {checkpoint} was trained with",
                                       _edited(saved, trained, changes)))
        return
    if saved is None:
        return
    changes = resume_changes(saved, given)
    if changes:
        raise ConfigError(_changed(run_dir, changes, f"the config it started with ({path})"))


def _changed(run_dir: str, changes: list[tuple[str, Any, Any]], source: str, edited: str = "") -> str:
    listed = "; ".join(f"{key}: {shown(before)} → {shown(after)}" for key, before, after in changes[:8])
    more = f" (and {len(changes) - 8} more)" if len(changes) > 8 else ""
    return (f"{run_dir}: --resume continues the run with {source}, and the config given differs in "
            f"what the run trains: {listed}{more}.{edited} Drop those changes to resume, or start a new run with "
            "another --output-dir. A resumed run may change only its length, logging, saving, evaluation interval, "
            "trackers, guards, device, parallelism and how the rollout server is reached.")


def _edited(saved: Optional[RunConfig], trained: dict[str, Any], changes: list[tuple[str, Any, Any]]) -> str:
    """A sentence naming the changed keys that the run's config.yaml (``saved``) holds changed too:
    it was edited after the checkpoint was written. "" when it holds none of them."""
    edited = {key for key, _before, _after in recorded_changes(trained, saved)} if saved is not None else set()
    keys = [key for key, _before, _after in changes if key in edited]
    if not keys:
        return ""
    return (f" The run's config.yaml says so too ({', '.join(keys[:8])}): it was edited after the checkpoint was "
            "written, and the checkpoint's weights and optimizer state are what the run trains on; put its old "
            "values back.")


def _resumable(key: str) -> bool:
    return _listed(key, RESUMABLE)


def _listed(key: str, keys: tuple[str, ...]) -> bool:
    """Whether ``key`` is a secret, or one of ``keys`` or below one of them."""
    return bool(SECRET_NAME.search(key.rsplit(".", 1)[-1])) or _under(key, keys)


def _under(key: str, keys: tuple[str, ...]) -> bool:
    return any(key == k or key.startswith(k + ".") for k in keys)


__all__ = ["WATCHING", "RESUMABLE", "as_trained", "trained_record", "recorded_changes", "resume_changes", "result_changes",
           "check_resume_config"]
