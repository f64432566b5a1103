"""LoRA adapters (peft) on the policy: attach, save and restore only what is trained.

With ``model.lora`` set, the policy is a ``peft`` model whose base weights are frozen; the
optimizer sees the adapter weights alone, checkpoints hold them alone, and a run's ``final/``
directory is a peft adapter directory (``adapter_config.json``, ``adapter_model.safetensors``
and the tokenizer) that ``model.name`` accepts again: its base is the directory named in
``adapter_config.json``.
"""

from __future__ import annotations

import contextlib
import json
import os
import warnings
from typing import Any, Iterator, Optional

from distil_core.errors import ConfigError
from distil_core.models.model_dir import adapter_weights_problem, unloadable

ADAPTER_CONFIG = "adapter_config.json"
INSTALL_HINT = "pip install peft (or pip install 'distil-toolkit[smollm2]')"


def _peft() -> Any:
    try:
        import peft
    except ImportError:
        raise ConfigError(f"model.lora needs the peft package, which is not installed: {INSTALL_HINT}.") from None
    return peft


def is_lora(model: Any) -> bool:
    """Whether ``model`` carries peft adapters."""
    return hasattr(model, "peft_config") and callable(getattr(model, "disable_adapter", None))


def is_adapter_dir(path: str) -> bool:
    return os.path.isfile(os.path.join(path, ADAPTER_CONFIG))


def adapter_base(path: str) -> str:
    """The base model directory an adapter directory was trained on."""
    try:
        with open(os.path.join(path, ADAPTER_CONFIG), encoding="utf-8") as fh:
            saved = json.load(fh)
    except ValueError:  # not JSON, or not text
        raise unloadable("adapter", path, f"{ADAPTER_CONFIG} is damaged (not valid JSON)") from None
    base = saved.get("base_model_name_or_path") if isinstance(saved, dict) else None
    if not base or not os.path.isdir(base):
        raise ConfigError(
            f"model.name {path!r} holds LoRA adapters whose base model directory {base!r} (named in "
            f"{ADAPTER_CONFIG}) does not exist here. Rebuild the base first (run once with the "
            "model.name the adapters were trained from, e.g. smollm2 or tiny), or edit "
            f"base_model_name_or_path in {ADAPTER_CONFIG}."
        )
    return base


@contextlib.contextmanager
def quiet_peft() -> Iterator[None]:
    """Hide the FutureWarning peft's wrapping raises on transformers 5: peft reads the model's
    deprecated ``is_gradient_checkpointing``, and every LoRA run printed the warning first,
    though nothing in the user's config or code can act on it."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
        yield


def attach_lora(model: Any, settings: Any, adapter_dir: Optional[str] = None) -> Any:
    """``model`` with adapters: new ones from ``settings`` (``model.lora``), or those saved in
    ``adapter_dir`` — trainable when ``settings`` is set, merged into the weights otherwise."""
    if adapter_dir is None and settings is None:
        return model
    peft = _peft()
    if adapter_dir is not None:
        try:
            with quiet_peft():
                loaded = peft.PeftModel.from_pretrained(model, adapter_dir, is_trainable=settings is not None)
        except Exception as exc:  # peft and safetensors raise several types for a missing or cut file
            problem = adapter_weights_problem(adapter_dir)
            if problem is None:
                raise
            raise unloadable("adapter", adapter_dir, problem) from exc
        return loaded if settings is not None else loaded.merge_and_unload()
    check_rank(model, settings.r)
    config = peft.LoraConfig(
        task_type="CAUSAL_LM",
        r=settings.r,
        lora_alpha=settings.alpha,
        lora_dropout=settings.dropout,
        target_modules=settings.target_modules,
    )
    try:
        with quiet_peft():
            return peft.get_peft_model(model, config)
    except ValueError as exc:
        names = sorted({last for name, _ in model.named_modules()
                        if name and not (last := name.rsplit(".", 1)[-1]).isdigit()})  # no layer numbers
        raise ConfigError(
            f"model.lora.target_modules {settings.target_modules!r}: {exc} Module names in this "
            f"model: {', '.join(names[:40])}."
        ) from None


def check_rank(model: Any, r: Any) -> None:
    """A ConfigError for a ``model.lora.r`` below 1, or above every layer's width: an adapter of
    rank above min(in, out) adds weights (a copy of the model's size, or more) but no capacity."""
    widest = max((min(m.weight.shape) for _, m in model.named_modules()
                  if getattr(getattr(m, "weight", None), "dim", lambda: 0)() == 2), default=None)
    if isinstance(r, bool) or not isinstance(r, int) or r < 1:
        raise ConfigError(f"model.lora.r must be an integer of at least 1 (got {r!r})")
    if widest is not None and r > widest:
        raise ConfigError(f"model.lora.r {r} is above the width of every layer of this model (at most {widest}): "
                          f"use r <= {widest} (ranks of 8 to 64 are usual)")


def trainable_parameters(model: Any) -> list[Any]:
    return [p for p in model.parameters() if p.requires_grad]


def policy_state(model: Any) -> dict[str, Any]:
    """What a checkpoint keeps of the policy: every weight, or under LoRA the adapters only."""
    if not is_lora(model):
        return model.state_dict()
    return {name: p.detach() for name, p in model.named_parameters() if p.requires_grad}


def load_policy_state(model: Any, state: dict[str, Any], where: str = "checkpoint") -> None:
    """Inverse of :func:`policy_state`; a LoRA/full mismatch is an error that says so."""
    check_policy_state(model, state, where)
    model.load_state_dict(state, strict=not is_lora(model))


def check_policy_state(model: Any, state: dict[str, Any], where: str = "checkpoint") -> None:
    """Raise a ConfigError unless ``state`` is what :func:`policy_state` keeps of ``model``:
    the same weights (all of them, or under LoRA the adapters), each of the same shape."""
    if not is_lora(model):
        if any("lora_" in key for key in state):
            raise ConfigError(f"{where} holds LoRA adapter weights but model.lora is not set; resume with the run's model.lora.")
        check_shapes(model.state_dict(), state, where)
        return
    wanted = {name: p for name, p in model.named_parameters() if p.requires_grad}
    missing = sorted(set(wanted) - set(state))
    if missing:
        raise ConfigError(
            f"{where} lacks {len(missing)} adapter weights of this model (e.g. {missing[0]!r}); "
            "resume with the run's own model.lora settings."
        )
    extra = sorted(set(state) - set(wanted))
    if extra:
        raise ConfigError(
            f"{where} holds weights this LoRA model does not train (e.g. {extra[0]!r}); it was "
            "saved with other model.lora settings (or without LoRA)."
        )
    check_shapes(wanted, state, where)


def check_shapes(own: dict[str, Any], state: dict[str, Any], where: str) -> None:
    """A ConfigError naming the first weight that ``state`` lacks, adds or holds in another
    shape than ``own`` (the model's): a checkpoint of another model size, which torch would
    report as a page of every mismatch."""
    def fits(key: str) -> bool:
        return key in own and key in state and tuple(getattr(state[key], "shape", ())) == tuple(own[key].shape)

    key = next((k for k in [*own, *state] if not fits(k)), None)
    if key is None:
        return
    if key not in state:
        why = f"it lacks {key!r}"
    elif key not in own:
        why = f"it holds {key!r}, which this model has not"
    else:
        why = f"{key!r} is {list(getattr(state[key], 'shape', ()))} in it, {list(own[key].shape)} in this model"
    raise ConfigError(f"{where} does not fit this run's model ({why}): resume with the config the run was started "
                      "with (its config.yaml, without --set changes to the model).")


def adapters_are_identity(model: Any) -> bool:
    """Whether the adapters change nothing yet (every ``lora_B`` is zero, as peft initialises them)."""
    found = False
    for name, p in model.named_parameters():
        if "lora_B" in name:
            found = True
            if bool(p.detach().ne(0).any()):
                return False
    return found


def adapter_weights(model: Any) -> dict[str, Any]:
    """A detached copy of the trainable (adapter) weights, by name."""
    return {name: p.detach().clone() for name, p in model.named_parameters() if p.requires_grad}


@contextlib.contextmanager
def swapped_adapters(model: Any, weights: dict[str, Any]) -> Iterator[None]:
    """Run a block with ``weights`` in place of the model's adapter weights, then put them back."""
    import torch

    params = dict(model.named_parameters())
    saved = {}
    with torch.no_grad():
        for name, value in weights.items():
            saved[name] = params[name].detach().clone()
            params[name].copy_(value)
    try:
        yield
    finally:
        with torch.no_grad():
            for name, value in saved.items():
                params[name].copy_(value)
