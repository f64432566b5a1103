"""Rollouts: the student's own samples, generated in-process or by a rollout server.

``local`` generates with the policy in this process (keyed sampling, so a row's sample does not
depend on its batch neighbours); ``server`` sends the same requests to a ``distil serve``
process and keeps its weights in step with the trainer's.

May import the contract layer and ``models``.
"""
