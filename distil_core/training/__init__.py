"""Training: the loop that turns rollouts into updates.

``Trainer.fit`` drives one step at a time through plain functions (rollout → verify → feedback
→ expert context → expert signal → loss → optimiser), logs every step as JSONL, evaluates on
held-out problems, and checkpoints so that a run can resume. Also here: building the run's
components from a config (``runtime``), ranks and sharding (``distributed``, ``fsdp``) and the
evaluation metrics.

May import the contract layer (``distil_core.types`` … ``distil_core.config``), ``models``,
``rollouts`` and ``losses``; never ``serving`` or ``cli``.
"""
