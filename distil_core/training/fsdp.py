"""Sharded trainer ranks (``train.parallel: fsdp``): torch's FSDP2 on the policy.

Each decoder block and then the whole model go through ``fully_shard``: every rank keeps
1/N of the policy's parameters, gradients and optimizer state, and all-gathers a block's
weights for its forward and backward. Three things make this fit the trainer:

* Gradients are *summed* over ranks (divide factor 1): each micro-batch's loss is already
  weighted by its share of the global batch, as under DDP.
* Generation, expert scoring and evaluation call the model a different number of times on
  each rank, and a per-forward all-gather would then deadlock. :func:`full_weights` gathers
  the whole policy once, before such a phase, and frees it after; inside, forwards use the
  gathered weights and run no collective. The cost: the full parameters are resident during
  those phases.
* Checkpoints hold full state dicts in the 1-process format (optimizer state keyed by the
  parameter's index), so ``--resume`` works across ddp, fsdp and any number of ranks.
"""

from __future__ import annotations

import contextlib
from typing import Any, Iterator

import torch

from distil_core.errors import ConfigError
from distil_core.losses.methods import method_named
from distil_core.models.lora import check_policy_state, is_lora

_FULL = dict(full_state_dict=True, cpu_offload=True)  # gathered on rank 0, in CPU memory


def shard_policy(model: torch.nn.Module) -> list[Any]:
    """``fully_shard`` the model's blocks, then the model; returns every FSDP module."""
    from torch.distributed.fsdp import FSDPModule, fully_shard

    for block in _blocks(model):
        fully_shard(block)
    fully_shard(model)
    # FSDP picks as root the first module to run forward; generate() under peft enters below the
    # root (the wrapped model), so settle it now (torch has no public call for this)
    fully_shard.state(model)._lazy_init()
    modules = [m for m in model.modules() if isinstance(m, FSDPModule)]
    for m in modules:
        m.set_gradient_divide_factor(1.0)
        # a plain SUM: gloo has no pre-multiplied sum, and with a factor of 1 none is needed
        m.set_force_sum_reduction_for_comms(True)
    return modules


def _blocks(model: torch.nn.Module) -> list[torch.nn.Module]:
    """The repeated blocks: the longest ``ModuleList`` whose members are all of one class."""
    best: list[torch.nn.Module] = []
    for module in model.modules():
        if isinstance(module, torch.nn.ModuleList) and len(module) > len(best):
            kinds = {type(m) for m in module}
            if len(kinds) == 1 and any(True for _ in module[0].parameters()):
                best = list(module)
    return best


@contextlib.contextmanager
def full_weights(model: torch.nn.Module) -> Iterator[None]:
    """Every FSDP module unsharded for the block: forwards inside run no collective, so ranks
    may call the model different numbers of times (generate, score, evaluate). Collective."""
    from torch.distributed.fsdp import FSDPModule

    modules = [m for m in model.modules() if isinstance(m, FSDPModule)]
    model.set_reshard_after_forward(False)
    for m in modules:
        m.unshard()
    try:
        yield
    finally:
        for m in modules:
            m.reshard()
        model.set_reshard_after_forward(True)
        model.set_reshard_after_forward(False, recurse=False)  # the root keeps its default


def _options(**extra: Any) -> Any:
    from torch.distributed.checkpoint.state_dict import StateDictOptions

    return StateDictOptions(**extra)


def _trainable_names(model: torch.nn.Module) -> list[str]:
    """The optimizer's parameters by name, in its order (that of ``trainable_parameters``)."""
    return [name for name, p in model.named_parameters() if p.requires_grad]


def model_state(model: torch.nn.Module) -> dict[str, Any]:
    """The full weights on rank 0 (empty elsewhere); collective. Under LoRA, as
    :func:`~distil_core.models.lora.policy_state` keeps them: the adapters alone."""
    from torch.distributed.checkpoint.state_dict import get_model_state_dict

    full = get_model_state_dict(model, options=_options(**_FULL))
    if is_lora(model) and full:
        wanted = set(_trainable_names(model))
        full = {k: v for k, v in full.items() if k in wanted}
    return full


def full_model_state(model: torch.nn.Module) -> dict[str, Any]:
    """Every weight (base and adapters) on rank 0, for ``save_pretrained``; collective. A tied
    weight appears once, under its first name, as ``save_pretrained`` writes it unsharded."""
    from torch.distributed.checkpoint.state_dict import get_model_state_dict

    full = get_model_state_dict(model, options=_options(**_FULL))
    first = {name for name, _ in model.named_parameters()}
    aliases = {name for name, _ in model.named_parameters(remove_duplicate=False)} - first
    return {k: v for k, v in full.items() if k not in aliases}


def optimizer_state(model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> dict[str, Any]:
    """The optimizer's full state on rank 0, keyed as ``optimizer.state_dict()`` keys it on one
    process (parameter indices), so any run can load it; collective."""
    from torch.distributed.checkpoint.state_dict import get_optimizer_state_dict

    full = get_optimizer_state_dict(model, optimizer, options=_options(**_FULL))
    if not full:
        return {}
    index = {name: i for i, name in enumerate(_trainable_names(model))}
    return {
        "state": {index[name]: value for name, value in full["state"].items()},
        "param_groups": [{**g, "params": [index[name] for name in g["params"]]} for g in full["param_groups"]],
    }


def load_state(model: torch.nn.Module, optimizer: torch.optim.Optimizer, policy: dict[str, Any],
               optim: dict[str, Any], where: str) -> None:
    """Inverse of :func:`model_state` and :func:`optimizer_state`; every rank passes the whole
    checkpoint and keeps its shard."""
    from torch.distributed.checkpoint.state_dict import set_model_state_dict, set_optimizer_state_dict

    check_policy_state(model, policy, where)
    set_model_state_dict(model, policy, options=_options(full_state_dict=True, strict=not is_lora(model)))
    names = _trainable_names(model)
    by_name = {
        "state": {names[i]: value for i, value in optim["state"].items()},
        "param_groups": [{**g, "params": [names[i] for i in g["params"]]} for g in optim["param_groups"]],
    }
    set_optimizer_state_dict(model, optimizer, by_name, options=_options(full_state_dict=True))


def norm_value(norm: Any) -> float:
    """``clip_grad_norm_``'s result as a float (a DTensor over sharded gradients)."""
    return float(norm.full_tensor() if hasattr(norm, "full_tensor") else norm)


def check_config(config: Any) -> None:
    """Refuse, at the start, what ``train.parallel: fsdp`` does not support."""
    if config.loss.chunk_size > 0 and method_named(config.method).chunkable:
        raise ConfigError(
            "loss.chunk_size is not supported with train.parallel: fsdp (the chunked losses read the "
            "output projection's weight outside the model's forward, where it is sharded). Set "
            "loss.chunk_size: 0, or train.parallel: ddp.")
    if config.rollout.backend == "server":
        raise ConfigError(
            "rollout.backend: server is not supported with train.parallel: fsdp (its weight sync saves "
            "the policy's state from every rank's shard). Use rollout.backend: local, or train.parallel: ddp.")
