"""Losses: DistIL and every baseline, as functions of logits and tokens.

``reference`` holds the plain, readable version of each loss (the one the tests check against
exact gradients), ``chunked`` the memory-lean version that never materialises the full
vocabulary for long responses, and ``methods`` the registry ``METHODS`` that says, for each
training method, whether it needs an expert, whether it can run chunked, and which loss it
computes. Adding a method is one entry there.

The public names of ``reference`` are re-exported here, so ``distil_core.losses.distil_loss``
keeps working. Imports torch and the contract layer only.
"""

from distil_core.losses.reference import *  # noqa: F401,F403
