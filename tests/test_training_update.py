"""Pieces of the update that need no model: which siblings a row's baseline leaves out."""

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

    # two groups of 3: rows 1 and 2 were shown row 0; row 5 was shown row 4
    got = baseline_exclusions([query(0), query(1, demo=0), query(2, demo=0), query(3), query(5, demo=4)], 6, 3)
    expected = torch.zeros(6, 3, dtype=torch.bool)
    expected[0, 1] = expected[0, 2] = True
    expected[4, 2] = True
    assert torch.equal(got, expected)
