"""Rollouts: the student's own samples, generated in-process or by a rollout server.

``local`` generates with the policy in this process and ``sampling`` holds the sampling
settings and the keyed sampler it shares with ``distil serve`` (a row's sample does not depend
on its batch neighbours); ``server`` sends the same requests to vLLM or ``distil serve``
and keeps the served weights in step with the trainer's, over the HTTP client in ``client``.

May import the contract layer and ``models``.
"""
