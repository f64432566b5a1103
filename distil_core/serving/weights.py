"""The weights ``distil serve`` answers with: its base model, LoRA adapters loaded by name at
run time, and full-weight reloads from a checkpoint directory.

This is the model side of vLLM's weight-update endpoints, which :mod:`distil_core.serving.http`
exposes (``/v1/load_lora_adapter``, ``/v1/unload_lora_adapter``, ``/collective_rpc`` with
``reload_weights``). Adapters are peft adapters injected into the served model; a request's
``model`` names the adapter to answer with, or the base. Every method here must be called
under the caller's model lock: loading, reloading and answering never overlap.

Errors are ``KeyError`` (no such adapter) or ``ValueError`` (a path or checkpoint that does
not fit, or a damaged file, named), with messages meant for the client.
"""

from __future__ import annotations

import contextlib
import json
import os
from dataclasses import dataclass
from typing import Any, Iterator, Optional

from distil_core.models.lora import ADAPTER_CONFIG, quiet_peft
from distil_core.models.model_dir import adapter_shapes


@dataclass
class _Adapter:
    path: str
    internal: str  # peft's name for it; a reload in place loads a new one, then drops the old


class ServedWeights:
    """``model`` (a HF causal LM) plus the LoRA adapters loaded onto it, by served name."""

    def __init__(self, model: Any, source: Optional[str] = None):
        self.base = model
        self.source = source  # where reload_weights without a path reads from
        self.adapters: dict[str, _Adapter] = {}
        self._peft: Any = None
        self._serial = 0

    # -- answering

    @contextlib.contextmanager
    def active(self, adapter: Optional[str]) -> Iterator[Any]:
        """The module to run for ``adapter`` (None: the base weights)."""
        if self._peft is None or (adapter is None and not self.adapters):
            # with every adapter unloaded, peft's layers add nothing (and its disable_adapter()
            # looks up the last active one, which is gone)
            yield self.base
        elif adapter is None:
            with self._peft.disable_adapter():
                yield self._peft
        else:
            self._peft.set_adapter(self.adapters[adapter].internal)
            yield self._peft

    # -- adapters

    def load_adapter(self, name: str, path: str, inplace: bool = False) -> None:
        """Load the peft adapter directory ``path`` as ``name``; ``inplace`` replaces a loaded one."""
        if not name:
            raise ValueError("'lora_name' must be a non-empty string.")
        if name in self.adapters and not inplace:
            raise ValueError(f"The lora adapter '{name}' has already been loaded. To replace it with new "
                             "weights, send 'load_inplace': true.")
        if not isinstance(path, str) or not os.path.isfile(os.path.join(path, ADAPTER_CONFIG)):
            raise ValueError(f"No LoRA adapter at {path!r}: 'lora_path' must be a directory holding "
                             f"{ADAPTER_CONFIG} and the adapter weights (peft's save_pretrained).")
        self._check_fits(path)
        self._serial += 1
        internal = f"adapter-{self._serial}"
        try:
            if self._peft is None:
                import peft

                with quiet_peft():
                    self._peft = peft.PeftModel.from_pretrained(self.base, path, adapter_name=internal)
            else:
                self._peft.load_adapter(path, adapter_name=internal)
        except (RuntimeError, ValueError, KeyError, OSError) as exc:
            self._drop(internal)
            raise ValueError(f"The adapter at {path!r} does not fit the served model (was it trained on another "
                             f"base?): {_message_head(exc)}") from None
        old = self.adapters.get(name)
        self.adapters[name] = _Adapter(path, internal)
        self._peft.set_adapter(internal)  # so that peft never finds its active adapter deleted
        if old is not None:
            self._drop(old.internal)
        self._peft.eval()

    def _check_fits(self, path: str) -> None:
        """Every adapter weight must sit on a module of the served model with matching sizes.

        Checked before peft touches the model, so a wrong adapter leaves it as it was.
        """
        if not os.path.isfile(os.path.join(path, "adapter_model.safetensors")):
            raise ValueError(f"No adapter_model.safetensors in {path!r}; save adapters with peft's save_pretrained.")
        try:
            shapes = adapter_shapes(path)
        except ValueError as exc:  # a file cut short or not safetensors at all
            raise ValueError(f"The adapter at {path!r} cannot be loaded: {exc}. Save it again with peft's "
                             "save_pretrained.") from None
        modules = dict(self.base.named_modules())
        for key, shape in shapes.items():
            owner, _, kind = key.removeprefix("base_model.model.").partition(".lora_")
            module = modules.get(owner)
            if module is None:
                raise ValueError(f"The adapter at {path!r} adapts {owner!r}, which the served model does not "
                                 "have: it was trained on another base model.")
            weight = getattr(getattr(module, "base_layer", module), "weight", None)
            if weight is None or weight.dim() != 2 or len(shape) != 2:
                continue
            fits = shape[1] == weight.shape[1] if kind.startswith("A") else shape[0] == weight.shape[0]
            if kind[:1] in "AB" and not fits:
                raise ValueError(f"The adapter at {path!r} does not fit {owner!r} (adapter weight {key} has "
                                 f"shape {tuple(shape)}, the module's weight {tuple(weight.shape)}): it was "
                                 "trained on another base model.")

    def unload_adapter(self, name: str) -> None:
        if name not in self.adapters:
            raise KeyError(f"The lora adapter '{name}' cannot be found; loaded: {sorted(self.adapters) or 'none'}.")
        self._drop(self.adapters.pop(name).internal)

    def _drop(self, internal: str) -> None:
        if self._peft is not None and internal in getattr(self._peft, "peft_config", {}):
            self._peft.delete_adapter(internal)

    # -- full weights

    def reload(self, path: Optional[str]) -> int:
        """Copy the weights saved in the HF directory ``path`` (default: where the model came
        from) into the served model; nothing changes unless every weight fits. Returns bytes read."""
        import torch

        path = path or self.source
        if not path:
            raise ValueError("This server does not know where its weights came from; pass "
                             "kwargs.weights_path (a directory of safetensors weights).")
        tensors, size = _read_safetensors(path)
        targets = self._base_parameters()
        missing = [name for name, aliases in targets.items() if not any(a in tensors for a in aliases)]
        if missing:
            raise ValueError(f"The weights at {path!r} lack {len(missing)} weights of the served model (e.g. "
                             f"{missing[0]!r}); they belong to another model.")
        known = {a for aliases in targets.values() for a in aliases}
        extra = sorted(set(tensors) - known)
        if extra:
            raise ValueError(f"The weights at {path!r} hold {len(extra)} weights the served model does not have "
                             f"(e.g. {extra[0]!r}); they belong to another model.")
        plan = []
        for name, aliases in targets.items():
            source = tensors[next(a for a in aliases if a in tensors)]
            param = aliases[name]
            if tuple(source.shape) != tuple(param.shape):
                raise ValueError(f"The weights at {path!r} give {name!r} the shape {tuple(source.shape)}; the "
                                 f"served model's is {tuple(param.shape)}. They belong to another model.")
            plan.append((param, source))
        with torch.no_grad():
            for param, source in plan:
                param.copy_(source.to(dtype=param.dtype, device=param.device))
        return size

    def _base_parameters(self) -> dict[str, dict[str, Any]]:
        """Each base weight (shared ones once) → {every checkpoint name it goes by: the parameter}.

        With adapters loaded, peft's layers wrap the base ones (``q_proj.base_layer.weight``);
        checkpoints name them as the plain model does (``q_proj.weight``).
        """
        by_param: dict[int, dict[str, Any]] = {}
        first: dict[int, str] = {}
        for raw, param in self.base.named_parameters(remove_duplicate=False):
            if "lora_" in raw:
                continue
            name = raw.replace(".base_layer.", ".")
            by_param.setdefault(id(param), {})[name] = param
            first.setdefault(id(param), name)
        return {first[key]: aliases for key, aliases in by_param.items()}

    # -- listing

    def cards(self, base_name: str) -> list[dict[str, Any]]:
        """``GET /v1/models`` entries of the loaded adapters, as vLLM lists them."""
        return [{"id": name, "object": "model", "created": 0, "owned_by": "distil", "root": a.path,
                 "parent": base_name} for name, a in self.adapters.items()]


def _read_safetensors(path: str) -> tuple[dict[str, Any], int]:
    """Every tensor of the safetensors checkpoint in directory ``path`` (one file or shards)."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    if not os.path.isdir(path):
        raise ValueError(f"'weights_path' {path!r} is not a directory; give the directory a model was "
                         "saved to with save_pretrained (safetensors).")
    index = os.path.join(path, "model.safetensors.index.json")
    if os.path.isfile(index):
        files = _shards(index)
    else:
        files = sorted(f for f in os.listdir(path) if f.endswith(".safetensors") and not f.startswith("adapter_"))
    if not files:
        raise ValueError(f"No safetensors weights in {path!r} (expected model.safetensors or shards with "
                         "model.safetensors.index.json).")
    tensors: dict[str, Any] = {}
    size = 0
    for name in files:
        full = os.path.join(path, name)
        try:
            tensors.update(load_file(full))
        except (SafetensorError, OSError) as exc:  # missing, cut short, or not safetensors at all
            raise ValueError(f"The weights file {full!r} cannot be read ({_message_head(exc)}); save the model "
                             "again with save_pretrained.") from None
        size += os.path.getsize(full)
    return tensors, size


def _shards(index: str) -> list[str]:
    """The shard files that the index file ``index`` (``model.safetensors.index.json``) names."""
    try:
        with open(index, encoding="utf-8") as fh:
            weight_map = json.load(fh).get("weight_map")
    except (ValueError, AttributeError):  # not JSON, or not a JSON object
        weight_map = None
    if not isinstance(weight_map, dict) or not weight_map or not all(isinstance(f, str) for f in weight_map.values()):
        raise ValueError(f"The index file {index!r} is damaged: it needs a 'weight_map' from weight names to shard "
                         "files, as save_pretrained writes it.")
    return sorted(set(weight_map.values()))


def _message_head(exc: BaseException) -> str:
    """An exception's message cut to its first two lines, joined, and 400 characters: enough of a
    loader's error to name the cause, short enough for one line of ours."""
    text = str(exc).strip().splitlines()
    return " ".join(text[:2])[:400] if text else type(exc).__name__
