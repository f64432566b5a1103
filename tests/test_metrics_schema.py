"""Every metrics row carries ce_to_expert and kl_to_expert: dense and top-k experts give numbers
(top-k over its k+1 buckets), sampled-token and text experts null."""

import json
import math

import pytest
import torch
import torch.nn.functional as F

from distil_core.config import load_config
from distil_core.losses.chunked import ExpertTopK, chunked_loss
from distil_core.losses.expert_batch import DIVERGENCE_KEYS, dense_stats, topk_stats
from distil_core.plugin_host import PluginHost
from distil_core.testing import FAST_RUN
from distil_core.training.trainer import Trainer


def _by_hand(student_logits, ids, expert_logprobs):
    """CE and KL over the k ids plus one bucket holding the rest of each side's mass, in plain floats."""
    z = [math.exp(v) for v in student_logits]
    p = [v / sum(z) for v in z]
    p_buckets = [p[i] for i in ids] + [1 - sum(p[i] for i in ids)]
    q_buckets = [math.exp(v) for v in expert_logprobs] + [1 - sum(math.exp(v) for v in expert_logprobs)]
    ce = -sum(q * math.log(pb) for q, pb in zip(q_buckets, p_buckets))
    kl = sum(q * math.log(q / pb) for q, pb in zip(q_buckets, p_buckets))
    return ce, kl


def test_topk_ce_and_kl_are_over_the_top_tokens_and_one_rest_bucket():
    student = [[2.0, 0.5, -1.0, 0.0, 1.0], [0.0, 0.0, 3.0, -2.0, 0.5]]
    ids = [[0, 4], [2, 1]]
    expert = [[math.log(0.6), math.log(0.3)], [math.log(0.5), math.log(0.25)]]
    mask = torch.tensor([[1.0, 1.0]])
    stats = topk_stats(torch.tensor([student]), torch.tensor([ids]), torch.tensor([expert]), mask)
    by_hand = [_by_hand(s, i, e) for s, i, e in zip(student, ids, expert)]
    assert stats["ce_to_expert"] == pytest.approx((by_hand[0][0] + by_hand[1][0]) / 2, rel=1e-5)
    assert stats["kl_to_expert"] == pytest.approx((by_hand[0][1] + by_hand[1][1]) / 2, rel=1e-5)
    # a masked position does not count
    only_first = topk_stats(torch.tensor([student]), torch.tensor([ids]), torch.tensor([expert]), torch.tensor([[1.0, 0.0]]))
    assert only_first["kl_to_expert"] == pytest.approx(by_hand[0][1], rel=1e-5)
    assert by_hand[0][1] > 0 and by_hand[1][1] > 0


def test_topk_over_the_whole_vocabulary_is_the_dense_value():
    torch.manual_seed(0)
    student, teacher = torch.randn(2, 3, 6, dtype=torch.float64), torch.randn(2, 3, 6, dtype=torch.float64)
    lps, ids = torch.topk(F.log_softmax(teacher, -1), 6, dim=-1)
    mask = torch.tensor([[1.0, 1.0, 0.0], [1.0, 1.0, 1.0]], dtype=torch.float64)
    assert topk_stats(student, ids, lps, mask) == pytest.approx(dense_stats(student, teacher, mask), rel=1e-9)
    partial = topk_stats(student, ids[..., :2], lps[..., :2], mask)  # fewer buckets: less of the gap is seen
    assert partial["kl_to_expert"] < dense_stats(student, teacher, mask)["kl_to_expert"]


def test_chunked_topk_stats_match_the_full_logit_ones():
    torch.manual_seed(1)
    hidden, weight = torch.randn(2, 5, 8, dtype=torch.float64), torch.randn(11, 8, dtype=torch.float64)
    lps, ids = torch.topk(F.log_softmax(torch.randn(2, 5, 11, dtype=torch.float64), -1), 3, dim=-1)
    tokens = torch.randint(0, 11, (2, 5))
    mask = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]], dtype=torch.float64)
    stats: dict = {}
    chunked_loss("jsd", hidden, weight, tokens, mask, ExpertTopK(ids, lps), chunk_size=2, stats=stats)
    assert stats == pytest.approx(topk_stats(F.linear(hidden, weight), ids, lps, mask), rel=1e-9)


class _ReferenceExpert:
    """Answers every query with its problem's reference: as text, or as sampled tokens."""

    access = "text"

    def __init__(self, runtime):
        self.tokenizer = runtime.tokenizer
        self.answers = {p.id: str(p.reference) for split in ("train", "test") for p in runtime.task.problems(split)}

    @property
    def capability(self):
        from distil_core import ExpertCapability

        return ExpertCapability(access=self.access, same_tokenizer=self.access != "text")

    def score(self, queries):
        from distil_core import ExpertSignal

        if self.access == "text":
            return [ExpertSignal(access="text", text=self.answers[q.problem_id]) for q in queries]
        out = []
        for q in queries:
            ref = self.tokenizer.encode(self.answers[q.problem_id], add_special_tokens=False)
            ids = torch.full((len(q.response_ids), 1), -100)
            n = min(len(ref), len(q.response_ids))
            ids[:n, 0] = torch.tensor(ref[:n])
            out.append(ExpertSignal(access="sampled", sample_ids=ids))
        return out


class _SampledExpert(_ReferenceExpert):
    access = "sampled"


class _SchemaPlugin:
    from distil_core import hookimpl

    @hookimpl
    def register_experts(register):
        register("schema_text", _ReferenceExpert)
        register("schema_sampled", _SampledExpert)


@pytest.mark.slow
@pytest.mark.parametrize("expert, access, logged", [
    ("expert.options={weights: frozen}", "dense", True),
    ("expert.options={weights: live, access: topk, k: 5}", "topk", True),
    ("expert=schema_sampled", "sampled", False),
    ("expert=schema_text", "text", False),
])
def test_every_row_has_both_keys_numbers_or_null(tmp_path, expert, access, logged):
    host = PluginHost(load_entrypoints=False)
    host.register_plugin(_SchemaPlugin, "schema-plugin")
    config = load_config(None, FAST_RUN + [expert, "train.steps=2", "loss.future_cost=ce", "rollout.temperature=2.0"])
    Trainer(config, run_dir=str(tmp_path), host=host, echo=lambda *_: None).fit()
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert len(rows) == 2 and all(r["expert_access"] == access and r["signal_rollouts"] > 0 for r in rows)
    for row in rows:
        for key in DIVERGENCE_KEYS:
            assert key in row
            if logged:
                assert math.isfinite(row[key]) and row[key] >= 0
            else:
                assert row[key] is None
    if logged:
        assert any(r["ce_to_expert"] > r["kl_to_expert"] for r in rows)  # CE = KL + the expert's entropy
