"""Reading a run config: YAML → :class:`RunConfig`, ``--set a.b=c`` overrides, and errors
that name the file, the key and the nearest valid key (a typo must not be silently ignored).
"""

from __future__ import annotations

import copy
import os
from typing import Annotated, Any, Optional, Sequence, Union, get_args, get_origin

import yaml
from pydantic import BaseModel, ValidationError

from distil_core.config.rollout_sections import SPLIT_KEYS
from distil_core.config.sections import RunConfig
from distil_core.config.yaml_text import SHOWN, check_finite, read_yaml, shown, yaml_problem
from distil_core.errors import ConfigError, did_you_mean


def load_config(path: Optional[str] = None, overrides: Optional[list[str]] = None, *, saved: bool = False) -> RunConfig:
    """Read ``path`` (YAML; None = the embedded default), apply ``key=value`` overrides, validate.

    ``saved``: ``path`` is a run's own config.yaml, so a key added since it was written takes the
    value the run trained with (:func:`as_saved_then`), not today's default."""
    data: dict[str, Any] = {}
    source = "the default config"
    if path is not None:
        source = path
        if not os.path.exists(path):
            raise ConfigError(f"Config file {path!r} does not exist.")
        try:
            with open(path, encoding="utf-8") as fh:
                loaded = read_yaml(fh.read(), path)
        except yaml.YAMLError as exc:
            raise ConfigError(f"{path}: not valid YAML{yaml_problem(exc)}") from None
        except (OSError, UnicodeDecodeError) as exc:
            raise ConfigError(f"Config file {path!r} cannot be read as a UTF-8 text file ({exc}).") from None
        if loaded is None:
            loaded = {}
        if not isinstance(loaded, dict):
            raise ConfigError(f"{path}: the top level must be a mapping of keys, not {type(loaded).__name__}.")
        data = as_saved_then(loaded) if saved else loaded
    defaults = default_sections() if overrides else {}
    from_file = set(data)
    for item in overrides or []:
        apply_override(data, item, defaults)
    _drop_inherited_options(data, defaults, from_file, overrides or [])
    if overrides:  # an error may be in the file or in what is set over it (--set, a spec's set): name both
        source += f" (and set: {', '.join(item.split('=', 1)[0].strip() for item in overrides)[:200]})"
    check_keys(RunConfig, data, source)
    check_finite(data, source)
    try:
        return RunConfig.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(format_validation_error(exc, source)) from None


def default_sections() -> dict[str, Any]:
    """The embedded default as the sections an override starts from, less the split of a step's
    rollouts: the method decides that where neither key is set (:data:`METHOD_SPLITS`), and a
    section seeded with the default method's split would set it for any other method."""
    defaults = RunConfig().model_dump(mode="json")
    defaults["rollout"] = {k: v for k, v in defaults["rollout"].items() if k not in SPLIT_KEYS}
    return defaults


def apply_override(data: dict[str, Any], item: str, defaults: Optional[dict[str, Any]] = None) -> None:
    """``a.b.c=value``: the value is parsed as YAML (``3`` is an int, ``[1, 2]`` a list).

    A section the file does not set starts from its default, so ``--set expert.options.k=20``
    keeps the default expert's name (one whose name ``--set`` changes drops the default's options,
    :func:`_drop_inherited_options`). A section the file sets is the file's alone: with
    ``expert: hf``, ``--set expert.options.k=20`` does not bring in the default expert's options.
    """
    if "=" not in item:
        raise ConfigError(f"--set {shown(item)}: expected key=value, for example --set train.steps=20")
    key, raw = item.split("=", 1)
    parts = [p for p in key.strip().split(".") if p]
    if not parts:
        raise ConfigError(f"--set {shown(item)}: empty key")
    try:
        value = read_yaml(raw, f"--set {shown(key)}")
    except yaml.YAMLError:
        value = raw
    node, default = data, defaults or {}
    for part in parts[:-1]:
        default = default.get(part) if isinstance(default, dict) else None
        child = node.get(part)
        if child is None and isinstance(default, dict):
            child = copy.deepcopy(default)
        else:
            default = None
        if not isinstance(child, dict):
            child = {} if child is None else _as_dict(child, part)
        node[part] = child
        node = child
    node[parts[-1]] = value


def _drop_inherited_options(data: dict[str, Any], defaults: dict[str, Any], from_file: set[str],
                            overrides: list[str]) -> None:
    """A component section that only ``--set`` wrote, and whose ``name`` it changed, keeps none of
    the default component's options: ``--set expert.name=api`` must not hand the API expert the
    self expert's ``weights: frozen`` (an unknown option there). Options set by ``--set`` stay."""
    for section, default in defaults.items():
        if section in from_file or not isinstance(default, dict) or set(default) != {"name", "options"}:
            continue
        given = data.get(section)
        if not isinstance(given, dict) or given.get("name") == default["name"] or not isinstance(given.get("options"), dict):
            continue
        keys = [item.split("=", 1)[0].strip() for item in overrides]
        if section in keys or f"{section}.options" in keys:  # written whole: every option is the user's
            continue
        named = {key.split(".")[2] for key in keys if key.startswith(f"{section}.options.") and key.count(".") >= 2}
        given["options"] = {key: value for key, value in given["options"].items() if key in named}


def _as_dict(value: Any, part: str) -> dict[str, Any]:
    if isinstance(value, str):  # task: digits → task: {name: digits}
        return {"name": value}
    raise ConfigError(f"--set: {shown(part)} is not a section")


def check_keys(model: type[BaseModel], data: Any, where: str, path: str = "") -> None:
    """Reject unknown keys anywhere in ``data``, naming the key and the nearest valid one, and
    booleans where only numbers go (pydantic would read ``true`` as 1: ``train.steps: yes``
    would run one step)."""
    if not isinstance(data, dict):
        return
    fields = model.model_fields
    for key, value in data.items():
        dotted = f"{path}.{key}" if path else str(key)
        if key not in fields:
            raise ConfigError(
                f"{where}: unknown key {shown(dotted)}.{did_you_mean(str(key)[:SHOWN], fields)}"
                " Run `distil train --print-config` to see every key with its default."
            )
        boolean = boolean_for_number(fields[key].annotation, value)
        if boolean is not None:
            raise ConfigError(f"{where}: {shown(dotted + boolean, plain=True)} is a boolean where a number goes; "
                              "give a number.")
        sub = _section_type(fields[key].annotation)
        if sub is None:
            continue
        if isinstance(value, list) and fields[key].annotation is not None and get_origin(fields[key].annotation) is list:
            for i, item in enumerate(value):
                check_keys(sub, item, where, f"{dotted}[{i}]")
        else:
            check_keys(sub, value, where, dotted)


def boolean_for_number(annotation: Any, value: Any) -> Optional[str]:
    """Where in ``value`` a boolean stands for a number of ``annotation`` ("" for the value
    itself, "[i]" for an item of a list of numbers), or None."""
    if isinstance(value, bool):
        return "" if numbers_only(annotation) else None
    if isinstance(value, list) and get_origin(annotation) in (list, tuple):
        args = [a for a in get_args(annotation) if a is not Ellipsis]
        for i, item in enumerate(value):
            if isinstance(item, bool) and args and numbers_only(args[min(i, len(args) - 1)]):
                return f"[{i}]"
    return None


def numbers_only(annotation: Any) -> bool:
    """Whether a field's type takes numbers (int or float, maybe optional or annotated) and no boolean."""
    if annotation in (int, float):
        return True
    if get_origin(annotation) is Annotated:
        return numbers_only(get_args(annotation)[0])
    if get_origin(annotation) is Union:
        kinds = [a for a in get_args(annotation) if a is not type(None)]
        return bool(kinds) and all(numbers_only(a) for a in kinds)
    return False


def _section_type(annotation: Any) -> Optional[type[BaseModel]]:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in get_args(annotation):
        found = _section_type(arg)
        if found is not None:
            return found
    return None


def format_validation_error(exc: ValidationError, where: str) -> str:
    problems = []
    for err in exc.errors():
        loc = ".".join(str(p) for p in err["loc"]) or "(top level)"
        msg = err["msg"]
        if err.get("type") == "literal_error" and err.get("ctx", {}).get("expected"):
            msg = f"must be one of {err['ctx']['expected']}"
        problems.append(f"{shown(loc, plain=True)}: {msg} (got {shown(err.get('input'))})")
    return f"{where}: invalid config. " + "; ".join(problems) + "."


def saved_config(run_dir: str) -> Optional[RunConfig]:
    """The config a run directory's ``config.yaml`` records, or None when it has none.

    Whatever reads a run back to compare it (``--resume``, a bench reusing a finished run) needs
    the same answer to "what did this run train with?"; a file that exists but cannot be read
    (bytes not UTF-8, nested past the recursion limit, written by an incompatible version) is a
    ConfigError naming it, never silently a different config.
    """
    path = os.path.join(run_dir, "config.yaml")
    if not os.path.exists(path):
        return None
    try:
        with open(path, encoding="utf-8") as fh:
            data = yaml.safe_load(fh)
        missing = unsaved_keys(data)
        if missing:
            raise ConfigError(f"{path}: the run's saved config cannot be read: it is not whole (it lacks "
                              f"{', '.join(missing[:6])}{' …' if len(missing) > 6 else ''}; a run writes every "
                              "section), so it is damaged")
        return RunConfig.model_validate(as_saved_then(data))
    except (OSError, UnicodeDecodeError, RecursionError, yaml.YAMLError, ValidationError) as exc:
        raise ConfigError(f"{path}: the run's saved config cannot be read ({type(exc).__name__})") from None


SAVED_SECTIONS = ("method", "seed", "model", "task", "verifier", "feedback", "expert", "context", "rollout", "loss",
                  "optim", "train", "eval")
"""The sections every run's config.yaml has held since runs were first saved: one that lacks any
was cut short or emptied. A section added later is not required (older runs' files lack it)."""


SUMMED_METHODS = ("distil",)
"""The built-in methods whose future credit reads ``loss.future_reduce`` (the registry's methods
with future credit; a test keeps the two in step)."""


def as_saved_then(data: Any) -> Any:
    """A saved config's ``data`` (or a checkpoint's record) as the run trained, where a key added
    since it was written has a default that is not how runs trained before it.

    ``loss.future_reduce`` came with the mean as its default; a run saved without it summed its
    future cost, so a ``distil`` run with future credit reads as ``sum``. Read at today's default
    instead, it would resume, or be reused by a bench, as a run it never was. Other methods never
    read the key and keep the default, so their older runs compare equal to new ones.
    """
    if not isinstance(data, dict):
        return data
    loss = data.get("loss")
    if (isinstance(loss, dict) and "future_reduce" not in loss and data.get("method") in SUMMED_METHODS
            and loss.get("future_credit", True) is not False):
        data = {**data, "loss": {**loss, "future_reduce": "sum"}}
    return data


def unsaved_keys(data: Any) -> list[str]:
    """The :data:`SAVED_SECTIONS` that ``data`` lacks: read as it is, a cut or emptied config.yaml
    would silently be the defaults there (another task, another evaluation). Keys inside a
    section are not required either: a key added by a later version is missing from every older
    run's file."""
    if not isinstance(data, dict):
        return ["every section (it is not a mapping)"]
    return [key for key in SAVED_SECTIONS if key not in data]


def run_dir_config(run_dir: str, overrides: Sequence[str] = ()) -> RunConfig:
    """The config a finished run was trained with (its ``config.yaml``, then ``overrides``), with
    ``model.name`` pointing at its ``final/`` model: what ``distil eval RUN_DIR`` and the
    diagnostics that reload a trained run evaluate. A path that is not a run directory, a missing
    or damaged ``config.yaml`` or a missing ``final/`` is a ConfigError naming the path and what
    to do, raised before any model is loaded (a diagnostic over several runs checks them all first)."""
    if not os.path.isdir(run_dir):
        what = "not a directory" if os.path.exists(run_dir) else "no such directory"
        raise ConfigError(f"{run_dir!r} is not a run directory ({what}); give the directory `distil train` "
                          "wrote (it holds config.yaml and final/).")
    saved = os.path.join(run_dir, "config.yaml")
    if not os.path.isfile(saved):
        raise ConfigError(f"{run_dir!r} is not a run directory (no config.yaml file: {saved}); give the "
                          "directory `distil train` wrote.")
    final = os.path.join(run_dir, "final")
    if os.path.exists(final) and not os.path.isdir(final):
        raise ConfigError(f"{final}: the run's final model should be a directory, and this is a file; restore it, "
                          f"or resume the run to write it again.")
    if not os.path.isdir(final):
        raise ConfigError(f"{run_dir!r} has no final/ model yet; finish the run (or resume it) first.")
    if any(item.split("=", 1)[0].strip() == "model.name" for item in overrides):
        raise ConfigError(f"--set model.name: a run directory ({run_dir}) is evaluated with its own final/ model; "
                          "to evaluate another model, give a config file instead of the run directory.")
    config = load_config(saved, list(overrides) + [f"model.name={os.path.abspath(final)}"], saved=True)
    saved_config(run_dir)  # and whole: a cut or emptied file would be the defaults where it lacks sections
    return config
