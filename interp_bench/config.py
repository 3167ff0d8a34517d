"""Plain dataclass configs for dictionaries and training, serialised as JSON next to artifacts."""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ARCHS = ("relu", "topk", "batchtopk", "jumprelu")


def _from_dict(cls, data: dict[str, Any]):
    """Build a dataclass from a dict, ignoring unknown keys so older/newer files still load."""
    names = {f.name for f in dataclasses.fields(cls)}
    return cls(**{k: v for k, v in data.items() if k in names})


class _JsonMixin:
    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_json(self, path: str | Path | None = None) -> str:
        text = json.dumps(self.to_dict(), indent=2)
        if path is not None:
            Path(path).write_text(text + "\n")
        return text

    @classmethod
    def from_dict(cls, data: dict[str, Any]):
        return _from_dict(cls, data)

    @classmethod
    def from_json(cls, text_or_path: str | Path):
        """Accept a JSON string or a path to a JSON file."""
        s = str(text_or_path)
        if not s.lstrip().startswith("{"):
            s = Path(s).read_text()
        return cls.from_dict(json.loads(s))


@dataclass
class DictionaryConfig(_JsonMixin):
    """Shape and sparsity method of one SAE (hook_out None) or transcoder (hook_out set)."""

    d_in: int
    d_sae: int
    arch: str = "topk"  # "relu" | "topk" | "batchtopk" | "jumprelu"
    d_out: int | None = None  # None -> SAE (d_out = d_in); else transcoder output width
    hook_in: str = ""  # short hook name, e.g. "L15.resid_post" or "L15.mlp_in"
    hook_out: str | None = None  # transcoder target, e.g. "L15.mlp_out"; None for an SAE
    model_name: str = ""
    k: int = 32  # topk / batchtopk: active latents per token
    skip: bool = False  # linear skip connection W_skip [d_in, d_out]
    # "tied": W_enc = W_dec^T (needs d_out == d_in); "random": unit-norm random columns;
    # "standardized": random, then each latent scaled and shifted so its pre-activation has mean 0
    # and variance 1 on the first batch, so every latent starts with an equal chance to be chosen.
    # "auto" = tied for an SAE, standardized for a transcoder (on the demo's transcoder: 35% of
    # latents never fire against 50% with "random", at a lower FVU; benchmarks/sweep_transcoder.py).
    encoder_init: str = "auto"
    # relu
    sparsity: str = "l1"  # "l1" (decoder-norm weighted) | "kl" (KL(rho || rho_hat) per latent)
    l1_coefficient: float = 5.0
    kl_target: float = 0.01  # rho: target firing probability for the KL penalty
    kl_coefficient: float = 1.0
    # topk / batchtopk
    auxk_alpha: float = 1 / 32
    auxk_k: int | None = None  # None -> d_in // 2 (Gao et al. 2024)
    threshold_ema: float = 0.99  # batchtopk: EMA decay of the inference threshold
    decode: str = "auto"  # topk decode path: "auto" | "sparse" | "dense"
    # Dtype of the encoder product that only *chooses* the TopK/BatchTopK latents during sparse
    # training; the chosen values are recomputed exactly in fp32. "auto" = bf16 on CPUs with AMX
    # (about 4x the fp32 matmul rate there), else fp32.
    select: str = "auto"  # "auto" | "bf16" | "fp32"
    # jumprelu
    l0_coefficient: float = 1.0
    # Inputs are normalised to mean norm sqrt(d_in), so pre-activations are O(1): a threshold
    # starting at 0.5 with a 0.1-wide STE window gets gradient from the start (0.01, SAELens's
    # default, left thresholds far below the pre-activations for hundreds of steps).
    jumprelu_bandwidth: float = 0.1
    jumprelu_init_threshold: float = 0.5

    def __post_init__(self) -> None:
        if self.arch not in ARCHS:
            raise ValueError(f"unknown arch {self.arch!r}; choose one of {', '.join(ARCHS)}")
        if self.d_in <= 0 or self.d_sae <= 0:
            raise ValueError(f"d_in and d_sae must be positive, got {self.d_in}, {self.d_sae}")
        if self.arch in ("topk", "batchtopk") and not 0 < self.k <= self.d_sae:
            raise ValueError(f"k must be in 1..d_sae={self.d_sae}, got {self.k}")
        if self.sparsity not in ("l1", "kl"):
            raise ValueError(f"sparsity must be 'l1' or 'kl', got {self.sparsity!r}")
        if self.decode not in ("auto", "sparse", "dense"):
            raise ValueError(f"decode must be auto, sparse or dense, got {self.decode!r}")
        if self.select not in ("auto", "bf16", "fp32"):
            raise ValueError(f"select must be auto, bf16 or fp32, got {self.select!r}")
        if self.encoder_init not in ("auto", "tied", "random", "standardized"):
            raise ValueError(
                "encoder_init must be auto, tied, random or standardized, "
                f"got {self.encoder_init!r}"
            )
        if self.encoder_init == "tied" and self.out_dim != self.d_in:
            raise ValueError(
                f"encoder_init='tied' needs d_out == d_in (got {self.out_dim} != {self.d_in}); "
                "use 'standardized' or 'random'"
            )

    @property
    def resolved_encoder_init(self) -> str:
        if self.encoder_init != "auto":
            return self.encoder_init
        return "standardized" if self.is_transcoder else "tied"

    @property
    def is_transcoder(self) -> bool:
        return self.hook_out is not None or (self.d_out is not None and self.d_out != self.d_in)

    @property
    def out_dim(self) -> int:
        return self.d_in if self.d_out is None else self.d_out

    @property
    def name(self) -> str:
        """Folder-friendly name, e.g. 'L8.resid_post-topk-4608'."""
        hook = self.hook_in or "x"
        if self.hook_out:
            hook = f"{hook}-to-{self.hook_out}"
        return f"{hook}-{self.arch}-{self.d_sae}"


@dataclass
class TrainConfig(_JsonMixin):
    """One training run (shared by all dictionaries trained on the same pass of reads)."""

    # None -> auto: 1e-3 / sqrt(d_sae / 2**14), Gao et al.'s 1/sqrt(d_sae) scaling at 5x their
    # constant: on 0.8M tokens (bench_train, TopK) it reached FVU 0.080 against 0.109 at 2e-4.
    lr: float | None = None
    batch_size: int = 4096  # tokens per step (per rank under DDP)
    tokens: int = 10_000_000  # total training tokens
    warmup_steps: int = 100  # linear lr warm-up
    decay_start: float = 0.8  # fraction of training after which lr decays to 0
    lr_decay: str = "linear"  # "linear" | "cosine" shape of that decay
    # Max grad norm per dictionary; <= 0 disables. Off by default: the summed-MSE gradient norm
    # is O(sqrt(d)), so a clip at 1 rescaled every step and slowed convergence (bench_train).
    grad_clip: float = 0.0
    seed: int = 0
    checkpoint_every: int = 1000  # steps; 0 disables intermediate checkpoints
    log_every: int = 50  # steps between JSONL metric lines
    dead_tokens: int = 10_000_000  # latent is dead after not firing on this many tokens
    sparsity_warmup_steps: int = 1000  # l1 / l0 / kl coefficient warm-up -> sparsity_scale
    # Adam's betas, lower than the usual (0.9, 0.999): a few massive-activation tokens (norms
    # tens of times the median in SmolLM2's residual stream) give rare gradient spikes, and a slow
    # second-moment average keeps the step size small for long after each one. On bench_train's
    # data and budget (0.8, 0.95) gave lower held-out FVU than (0.9, 0.999) (sweep_train,
    # seeds_train; benchmarks/RESULTS.md).
    adam_beta1: float = 0.8
    adam_beta2: float = 0.95
    adam_eps: float = 1e-8
    autocast: bool = False  # bf16 autocast of the forward on CUDA
    normalize_inputs: bool = True  # scale inputs/targets to mean norm sqrt(d) then fold at save
    init_b_dec: str = "mean"  # "mean" | "median" (geometric) | "zero"
    eval_every: int = 0  # steps between held-out evaluations; 0 disables
    device: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)  # free-form notes saved with the run

    def auto_lr(self, d_sae: int) -> float:
        return self.lr if self.lr is not None else 1e-3 / (d_sae / 2**14) ** 0.5

    @property
    def total_steps(self) -> int:
        return max(1, self.tokens // self.batch_size)
