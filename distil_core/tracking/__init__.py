"""Experiment trackers: a run's metrics, evaluations, config and sampled rollouts, mirrored to
TensorBoard, trackio, Weights & Biases or MLflow.

The run's JSONL files stay the record; a tracker is a view of them that a dashboard can read.
Every tracker is a :class:`~distil_core.protocols.Logger` registered through the
``register_loggers`` hook and chosen by name in ``train.report_to``.

- :mod:`.fanout`: :class:`Trackers`, the run's set of trackers (rank 0 only): what the trainer
  calls once per event, and where a tracker that fails at run time is dropped with a warning.
- :mod:`.values`: what a tracker is given: numeric scalars of a row, the flattened config
  (its secrets hidden first by :mod:`distil_core.redaction`), the rows of the rollout table.
- :mod:`.library`: importing a tracker's library lazily (a missing one is a ``ConfigError`` with
  the ``pip install`` to run) and its offline defaults.
- :mod:`.run_ids`: each tracker's own run id, kept in the run directory, so that a resumed run
  logs on into the tracker run it started.
- :mod:`.tensorboard_logger`, :mod:`.trackio_logger`, :mod:`.wandb_logger`,
  :mod:`.mlflow_logger`: the four built-in trackers, each writing under the run directory by
  default; :mod:`.run_style` holds what the wandb and trackio ones share (the same API).
- :mod:`.plugin`: the built-in plugin that registers them (a default plugin of the host).
"""

from distil_core.tracking.fanout import Trackers
from distil_core.tracking.values import flat_config, rollout_table, scalars

__all__ = ["Trackers", "flat_config", "rollout_table", "scalars"]
