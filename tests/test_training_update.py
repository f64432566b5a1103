"""Which siblings a row's group baseline leaves out: built from provenance, and delivered to the loss."""

import pytest
import torch

from distil_core.training.update import baseline_exclusions
from distil_core.types import ExpertQuery


def test_baseline_exclusions_name_the_siblings_whose_context_read_a_row():
    def query(index, demo=None):
        provenance = [{"source": "answer_check", "kind": "answer_check"}]
        if demo is not None:
            provenance.append({"source": "sibling", "kind": "demonstration", "rollout": str(demo)})
        return ExpertQuery(problem_id="p", rollout_index=index, context_messages=[], context_ids=[1],
                           response_ids=[2], response_text="", provenance=provenance)

    # two groups of 3: rows 1 and 2 were shown row 0; row 5 was shown row 4, sample 1 of its group
    # (provenance names a demonstration by its group_index, the same on any number of ranks)
    got = baseline_exclusions([query(0), query(1, demo=0), query(2, demo=0), query(3), query(5, demo=1)], 6, 3)
    expected = torch.zeros(6, 3, dtype=torch.bool)
    expected[0, 1] = expected[0, 2] = True
    expected[4, 2] = True
    assert torch.equal(got, expected)


def test_the_loss_receives_each_rows_exclusions_from_the_steps_provenance(tmp_path, monkeypatch):
    """End to end: the exclusions the group baseline sees in a real distil step are the ones the
    step's expert queries record, row for row, with micro-batches split on groups."""
    from distil_core.config import load_config
    from distil_core.losses import baselines
    from distil_core.plugin_host import PluginHost
    from distil_core.testing import FAST_RUN
    from distil_core.training import update
    from distil_core.training.trainer import Trainer

    expected, seen = [], []
    record = update.baseline_exclusions

    def recording_exclusions(queries, rows, group_size):
        out = record(queries, rows, group_size)
        expected.append(out)
        return out

    group_baseline = baselines.group_baseline

    def seeing_baseline(values, mask, group_size, exclude=None):
        seen.append(None if exclude is None else exclude.clone())
        return group_baseline(values, mask, group_size, exclude)

    monkeypatch.setattr(update, "baseline_exclusions", recording_exclusions)
    monkeypatch.setattr(baselines, "group_baseline", seeing_baseline)
    config = load_config(None, FAST_RUN + ["method=distil", "loss.baseline=group_loo", "optim.grad_accum=2",
                                           "train.steps=3"])
    trainer = Trainer(config, run_dir=str(tmp_path / "run"), host=PluginHost(load_entrypoints=False),
                      echo=lambda *_: None)
    for step in (1, 2, 3):
        trainer.train_step(step)

    assert len(expected) == 3  # one per step
    assert len(seen) == 6  # two micro-batches of whole groups per step
    for step, exclusions in enumerate(expected):
        got = torch.cat(seen[2 * step : 2 * step + 2])
        assert torch.equal(got, exclusions), step
    # the step's contexts did show siblings as demonstrations, so something was left out
    assert any(bool(e.any()) for e in expected)


def test_every_rank_takes_the_text_path_when_any_rank_got_a_text_signal():
    """A text expert's rows are trained on its text; a row without a usable signal weighs
    nothing. That is decided over all ranks: a rank whose rows all lack a signal must not fall
    back to training on the student's own responses (with the success term, every row would
    count, and the ranks would also disagree on their collectives)."""
    from types import SimpleNamespace

    from distil_core.config import RunConfig
    from distil_core.losses.methods import METHODS
    from distil_core.training.distributed import World
    from distil_core.training.update import RowInputs, row_targets
    from distil_core.types import ExpertSignal

    class Tokenizer:
        eos_token_id = 9

        def encode(self, text, add_special_tokens=False):
            return [1] * len(text.split())

    text = ExpertSignal(access="text", text="a b c")
    signals, responses, n = [text, None, None, None], [[5, 6, 9], [5, 9], [7, 7, 7, 9], [8, 9]], 2

    def rows_on(world, lo, hi):
        batch = SimpleNamespace(signals=signals[lo:hi], n=n, queries=[], rollouts=[
            SimpleNamespace(response_ids=r) for r in responses[lo:hi]],
            verdicts=[SimpleNamespace(score=float(j % 2)) for j in range(lo, hi)])
        learner = SimpleNamespace(method=METHODS["distil"], config=RunConfig(), world=world,
                                  runtime=SimpleNamespace(tokenizer=Tokenizer()))
        rows = RowInputs.of(learner, batch)
        return rows.text_mode, row_targets(learner, batch, rows.text_mode)[1]

    assert RunConfig().loss.reward_weight > 0  # the success term reads every row it trains on
    one = rows_on(World(), 0, 4)
    assert one == (True, [4, 0, 0, 0])  # the text plus its end token; no signal, no weight
    sent = {}

    class Ranks(World):  # all_gather_object between the two shards, answered in-process
        def gather(self, obj):
            sent[self.rank] = obj
            return [sent.get(rank, obj) for rank in range(self.size)]

    rows_on(Ranks(1, 2), 2, 4)  # rank 1 sends what its rows hold
    first = rows_on(Ranks(0, 2), 0, 2)
    second = rows_on(Ranks(1, 2), 2, 4)
    assert first == (True, [4, 0]) and second == (True, [0, 0])
    assert first[1] + second[1] == one[1]


@pytest.mark.parametrize("dropped", [range(8, 16), range(16)], ids=["half", "all"])
def test_divergences_to_the_expert_are_means_over_signal_tokens_whatever_the_micro_batches(tmp_path, monkeypatch, dropped):
    """ce_to_expert and kl_to_expert average over tokens with an expert signal. With the success
    term the loss also counts rows without one; the logged divergences must not change with how
    the rows fall into micro-batches, and a step that read no signal token logs null, not 0."""
    from distil_core.config import load_config
    from distil_core.plugin_host import PluginHost
    from distil_core.testing import FAST_RUN
    from distil_core.training import trainer as trainer_module
    from distil_core.training.trainer import Trainer

    update_policy = trainer_module.update_policy

    def without_signals(learner, batch):  # these rows get no expert signal, as a lone success
        for j in dropped:
            batch.signals[j] = None
        return update_policy(learner, batch)

    monkeypatch.setattr(trainer_module, "update_policy", without_signals)
    seen = {}
    for accum in (1, 2, 4):
        # the group baseline sees whole groups in any micro-batch (the batch one, each micro-batch's own rows)
        config = load_config(None, FAST_RUN + ["method=distil", "train.steps=1", "rollout.temperature=2.0",
                                               f"optim.grad_accum={accum}", "loss.baseline=group_loo"])
        assert config.loss.reward_weight > 0 and config.rollout.problems_per_step * config.rollout.samples_per_problem == 16
        trainer = Trainer(config, run_dir=str(tmp_path / str(accum)), host=PluginHost(load_entrypoints=False),
                          echo=lambda *_: None)
        row = trainer.train_step(1)
        seen[accum] = (row["loss"], row.get("ce_to_expert"), row.get("kl_to_expert"))
    if len(dropped) == 16:
        assert all(ce is None and kl is None for _, ce, kl in seen.values())
    else:
        loss, ce, kl = seen[1]
        assert ce > kl > 0
        for accum in (2, 4):
            assert seen[accum] == pytest.approx((loss, ce, kl), rel=1e-5)
