"""What a run is made of: the policy, its tokenizer, and the components the config names.

Plugin factories that take a ``runtime`` argument receive the :class:`Runtime`, which is how
an expert or a feedback source reaches the policy model, the tokenizer or the generator.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from dataclasses import dataclass, field
from typing import Any, Optional

import torch

from distil_core.version import __version__
from distil_core.io import atomic_directory
from distil_core.config import RunConfig
from distil_core.context import ContextBuilder, ContextTemplate
from distil_core.errors import ConfigError
from distil_core.losses.methods import method_named
from distil_core.models.activation_checkpointing import enable_gradient_checkpointing
from distil_core.models.precision import configure_autocast
from distil_core.training.distributed import current_world
from distil_core.rollouts.local import Generator, SamplingParams
from distil_core.plugin_host import PluginHost, factory_parameters, get_host
from distil_core.protocols import Expert, FeedbackSource, Task, Verifier, resolve
from distil_core.models.model_dir import reading_model_dir
from distil_core.models.tiny import BaseFeedback, announce, build_tiny_base, cached_path


@dataclass
class Runtime:
    config: RunConfig
    model: Any
    tokenizer: Any
    device: torch.device
    host: PluginHost
    task: Any = None
    verifier: Any = None
    feedback_sources: list[tuple[str, Any]] = field(default_factory=list)
    expert: Any = None
    generator: Any = None  # Generator, or rollouts.server.ServerGenerator
    context: Optional[ContextBuilder] = None
    model_source: str = ""

    @property
    def pad_id(self) -> int:
        tok = self.tokenizer
        return tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id

    def close(self) -> list[str]:
        """Release what the run's components hold (worker processes, warm sandboxes, thread
        pools): each of the verifier, the feedback sources, the expert and the generator that has
        a ``close()`` is closed, once. A process that trains several runs (``distil bench``, a
        notebook) would otherwise keep every finished run's workers until it exits. Returns one
        line per close that failed, so the caller can report it without hiding the run's own
        result or error."""
        parts = [("verifier", self.verifier), *(("feedback source", source) for _name, source in self.feedback_sources),
                 ("expert", self.expert), ("generator", self.generator)]
        failed, seen = [], set()
        for kind, part in parts:
            closer = getattr(part, "close", None)
            if part is None or id(part) in seen or not callable(closer):
                continue
            seen.add(id(part))
            try:
                resolve(closer())
            except Exception as exc:  # noqa: BLE001 - a plugin's own failure, reported by the caller
                failed.append(f"{kind} {type(part).__name__}: close() failed ({type(exc).__name__}: {exc})")
        return failed


def pick_device(name: str) -> torch.device:
    """``model.device`` as a torch device ("auto": CUDA when there is one, else the CPU); a name
    torch does not know, or CUDA on a machine without it, is a ConfigError naming the key."""
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        return torch.device("cpu")
    try:
        device = torch.device(name)
    except (RuntimeError, ValueError):
        raise ConfigError(f"model.device: {name!r} is not a device name torch knows; use auto, cpu, cuda or "
                          "cuda:N (or another torch device such as mps).") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"model.device: {name!r}, but this torch sees no CUDA device; use auto or cpu.")
    return device


def build_runtime(config: RunConfig, host: Optional[PluginHost] = None, *, progress: bool = True,
                  for_training: bool = True) -> Runtime:
    """Build every component named in ``config``; errors name the component and the fix.

    The feedback sources, and the expert when the run's method asks one, are built only
    ``for_training``. An evaluation passes ``for_training=False``: it samples and grades the
    policy alone; an expert can be costly to build (a second model, or an API client), and a
    feedback source may need what only the training machine has (a corrections store, a
    critic's model directory), so a trained run can be evaluated where those are gone. The
    method is looked up first, so a name without a registered method fails before anything
    slow runs.
    """
    method = method_named(config.method)
    host = host or get_host()
    task = build_component(host, "task", config.task.name, config.task.options)
    _check_protocol(task, Task, "task", config.task.name)
    model, tokenizer, source = load_policy(config, task, progress=progress, host=host)
    device = pick_device(config.model.device)
    model.to(device)
    configure_autocast(model, config.model, device)  # before any copy of the policy (the self expert's)
    if config.model.gradient_checkpointing:
        enable_gradient_checkpointing(model)
    rt = Runtime(config=config, model=model, tokenizer=tokenizer, device=device, host=host, task=task, model_source=source)
    params = SamplingParams(
        max_new_tokens=config.rollout.max_new_tokens,
        temperature=config.rollout.temperature,
        top_p=config.rollout.top_p,
    )
    if config.rollout.backend == "server":  # an inference server samples; the policy is synced to it
        from distil_core.rollouts.server import server_generator

        rt.generator = server_generator(config, model, tokenizer, params, world=current_world())
    else:
        rt.generator = Generator(model, tokenizer, params)
    rt.context = ContextBuilder(tokenizer, config.context, config.system_prompt)
    rt.verifier = build_component(host, "verifier", config.verifier.name, config.verifier.options, rt)
    _check_protocol(rt.verifier, Verifier, "verifier", config.verifier.name)
    if not for_training:
        return rt
    for comp in config.feedback:
        source = build_component(host, "feedback_source", comp.name, comp.options, rt)
        _check_protocol(source, FeedbackSource, "feedback source", comp.name)
        rt.feedback_sources.append((comp.name, source))
    if method.needs_expert:
        rt.expert = build_component(host, "expert", config.expert.name, config.expert.options, rt)
        _check_protocol(rt.expert, Expert, "expert", config.expert.name)
    return rt


def build_component(host: PluginHost, kind: str, name: str, options: dict[str, Any], runtime: Any = None) -> Any:
    try:
        return host.build(kind, name, options, runtime=runtime)
    except (ValueError, TypeError) as exc:
        raise ConfigError(f"{kind.replace('_', ' ')} {name!r}: {exc}") from None


def _check_protocol(obj: Any, protocol: type, kind: str, name: str) -> None:
    if not isinstance(obj, protocol):
        raise ConfigError(
            f"{kind} {name!r} was built as {type(obj).__name__}, which does not implement the "
            f"{protocol.__name__} protocol (see docs/plugins.md)."
        )


# -- the policy -------------------------------------------------------------------------------


def load_policy(
    config: RunConfig, task: Any, *, progress: bool = True, host: Optional[PluginHost] = None
) -> tuple[Any, Any, str]:
    """(model, tokenizer, where it came from).

    ``tiny`` is built once and cached on disk; ``smollm2`` (or a ``.gguf`` path) is converted
    once to a cached model directory; a directory of LoRA adapters (a LoRA run's ``final/``)
    loads its base and the adapters. With ``model.lora`` set, the policy gets trainable
    adapters and its base weights are frozen.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from distil_core.models.lora import adapter_base, attach_lora, is_adapter_dir
    from distil_core.models.gguf import ensure_gguf_model, is_gguf_name

    dtype = getattr(torch, config.model.dtype)
    name = config.model.name
    if name == "tiny":
        path = ensure_tiny_base(config, task, progress=progress, host=host)
    elif is_gguf_name(name):
        path = ensure_gguf_model(name, progress=progress)
    else:
        path = name
        if not os.path.isdir(path):
            raise ConfigError(
                f"model.name {path!r} is neither 'tiny', 'smollm2', a .gguf file nor a local model "
                "directory. Give the path of a directory that transformers' from_pretrained can "
                "read (models are never downloaded at run time)."
            )
    adapters = path if is_adapter_dir(path) else None
    base = adapter_base(path) if adapters else path
    with reading_model_dir(path, "tokenizer"):
        tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
    if tokenizer.chat_template is None:
        raise ConfigError(f"the tokenizer at {path!r} has no chat template; the context builder needs one.")
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    with reading_model_dir(base, "weights"):
        model = AutoModelForCausalLM.from_pretrained(base, dtype=dtype, local_files_only=True)
    model = attach_lora(model, config.model.lora, adapters)
    return model, tokenizer, path


DEFAULT_BASE_FEEDBACK = {"verifier": {"name": "exact_match", "options": {}}, "feedback": [{"name": "answer_check", "options": {}}]}


def base_feedback_key(components: dict[str, Any], host: PluginHost) -> dict[str, Any]:
    """``components`` as the tiny base's cache key holds them: without the options a component
    declares as changing how it runs, not what it returns (its optional ``run_options``, e.g.
    code_exec's ``workers``), so a speed setting neither pretrains a second base nor changes
    the starting weights.

    An entry of ``run_options`` is an option's name, or the tuple of keys that leads to an option
    nested in a mapping (the tools source's ``("tool_options", "python", "backend")``). A mapping
    that removing such options leaves empty goes too, so setting only run options keys the base
    exactly as setting none."""
    def without(options: dict[str, Any], paths: set[tuple[str, ...]]) -> dict[str, Any]:
        out = {}
        for key, value in options.items():
            if (key,) in paths:
                continue
            inner = {p[1:] for p in paths if len(p) > 1 and p[0] == key}
            if inner and isinstance(value, dict) and value:
                value = without(value, inner)
                if not value:
                    continue
            out[key] = value
        return out

    def kept(kind: str, comp: dict[str, Any]) -> dict[str, Any]:
        neutral = getattr(host.get(kind, comp["name"]).factory, "run_options", ())
        paths = {p if isinstance(p, tuple) else (p,) for p in neutral}
        return {**comp, "options": without(comp["options"], paths)}

    return {"verifier": kept("verifier", components["verifier"]),
            "feedback": [kept("feedback_source", c) for c in components["feedback"]]}


def base_feedback_components(config: RunConfig, host: PluginHost) -> dict[str, Any]:
    """The run's verifier and feedback sources that the tiny base is pretrained with: those whose
    factory does not need the runtime (a model-backed source cannot run before the model exists)
    and does not declare ``pretrains_base = False`` (a source reading a store that changes between
    runs: the base's cache key cannot hold what the store held when it was built). Without a
    usable verifier or source, the built-in ``exact_match`` / ``answer_check``."""

    def usable(kind: str, comp: Any) -> bool:
        factory = host.get(kind, comp.name).factory
        if getattr(factory, "pretrains_base", True) is False:
            return False
        params = factory_parameters(factory)
        return params is None or "runtime" not in params

    verifier = config.verifier if usable("verifier", config.verifier) else None
    sources = [c for c in config.feedback if usable("feedback_source", c)]
    return {
        "verifier": verifier.model_dump() if verifier else DEFAULT_BASE_FEEDBACK["verifier"],
        "feedback": [c.model_dump() for c in sources] or DEFAULT_BASE_FEEDBACK["feedback"],
    }


def template_key(template: ContextTemplate) -> dict[str, Any]:
    """The context template's part of a tiny base's key. The feedback cap is left out at its
    default, so the bases cached before the cap existed keep their keys (a cap that cuts none
    of the pretraining feedback leaves the weights as they were)."""
    default = ContextTemplate.model_fields["max_feedback_chars"].default
    return template.model_dump(exclude={"max_feedback_chars"} if template.max_feedback_chars == default else None)


def tiny_base_key(config: RunConfig, task: Any, host: PluginHost) -> tuple[str, str]:
    """(the cache path, the key) of the tiny base for this run: what decides its weights — the
    toolkit version, the recipe, the task, the template, the verifier and feedback it pretrains
    with (:func:`base_feedback_key`) and the answers it learns."""
    recipe = config.model.tiny
    components = base_feedback_components(config, host)
    identity: dict[str, Any] = {
        "version": __version__,
        "recipe": recipe.model_dump(exclude={"feedback_pool"} if not recipe.feedback_pool else None),
        "task": config.task.model_dump(),
        "template": template_key(config.context),
    }
    if components != DEFAULT_BASE_FEEDBACK:  # the default's key (and cached base) stays as it was
        identity["base_feedback"] = base_feedback_key(components, host)
    if callable(getattr(task, "answer_text", None)):  # what the base learns to answer
        train = list(resolve(task.problems("train")))  # problems() may be a coroutine function
        answers = [task.answer_text(p) for p in train[:200]]
        identity["answers"] = hashlib.sha256(json.dumps(answers).encode()).hexdigest()[:16]
    key = json.dumps(identity, sort_keys=True)
    return cached_path(f"tiny-{config.task.name}-{hashlib.sha256(key.encode()).hexdigest()[:12]}"), key


def ensure_tiny_base(config: RunConfig, task: Any, *, progress: bool = True, host: Optional[PluginHost] = None) -> str:
    """Path of the tiny base model for this task and template, building it on first use.

    The base is pretrained with the run's own verifier and feedback sources (see
    :func:`base_feedback_components`), so it reads the feedback text the run will give.
    """
    host = host or get_host()
    recipe = config.model.tiny
    path, key = tiny_base_key(config, task, host)
    if os.path.exists(os.path.join(path, "config.json")):
        return path
    components = base_feedback_components(config, host)
    names = [components["verifier"]["name"], *(c["name"] for c in components["feedback"])]
    verifier = build_component(host, "verifier", names[0], components["verifier"]["options"])
    _check_protocol(verifier, Verifier, "verifier", names[0])
    sources = [build_component(host, "feedback_source", c["name"], c["options"]) for c in components["feedback"]]
    for name, source in zip(names[1:], sources):
        _check_protocol(source, FeedbackSource, "feedback source", name)
    teacher = BaseFeedback(task, verifier, sources, pool=recipe.feedback_pool, names=names)
    began = time.time()
    announce(f"building the tiny base model for task {config.task.name!r}: {recipe.steps} pretraining steps "
             f"(first use of this task and recipe; cached in {path})")
    try:
        train = list(resolve(task.problems("train")))
        model, tokenizer = build_tiny_base(train, config.context, recipe, progress=progress, teacher=teacher)
    finally:
        closer = getattr(verifier, "close", None)
        if callable(closer):
            closer()
    with atomic_directory(path, replace=False) as tmp:  # a half-built base is never seen
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        with open(os.path.join(tmp, "recipe.json"), "w") as fh:
            fh.write(key)
    announce(f"tiny base model built in {time.time() - began:.0f} s")
    return path
