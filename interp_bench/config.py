"""Plain dataclass configs for dictionaries and training, serialised as JSON next to artifacts.

Each field's docstring (the string right below it) is its documentation and its ``--help`` line
(``interp_bench.commands.config_args`` builds the CLI flags from these classes), so a default is
typed once. Every config checks its own values in ``__post_init__``, before anything expensive.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from interp_bench.dictionaries.dictionary import SparseDictionary

ARCHS = ("relu", "topk", "batchtopk", "jumprelu")
REVIVE = ("auto", "none", "recenter", "fire", "linear")
# The default learning rate's run-length rule (TrainConfig.short_run_boost).
LR_FULL_STEPS = 192
LR_MAX_BOOST = 2.0
LR_FULL_WIDTH = 8  # d_sae / d_in of the workloads LR_FULL_STEPS and LR_MAX_BOOST were measured on
BOOSTED_ARCHS = ("topk", "batchtopk")  # the short-run boost's evidence: TopK SAEs
# TopK transcoders and CLTs: this times the SAE's run-length factor (at 8x width); measured at
# 48-390 steps per layer with random decoder rows (1,000 with fitted ones) and at 60 for CLTs.
TRANSCODER_BOOST = 2.0
# With fitted decoder rows (decoder_init="fit"): this instead, up to FITTED_TAPER[0] steps,
# tapering (in log steps) to TRANSCODER_BOOST at FITTED_TAPER[1].
FITTED_BOOST = 3.0
FITTED_TAPER = (390, 1000)
# An SAE's dead window (tokens without firing before AuxK takes a latent), when shorter than
# the run's (10% of it). Most latents a held-out set scores as never firing are rare, not dead:
# they fire within the run's window, so AuxK never sees them. At 390 and 1,000 steps this window
# tied or beat the run's on every SAE layer measured (L3-L21, 8x, k 32); transcoders keep the
# run's window (it costs their deep layers FVU): RESULTS.md, "Never-firing latents are mostly
# rare, not dead".
SAE_DEAD_WINDOW = 20_480


def transcoder_boost(steps: int, fitted: bool = True) -> float:
    """A TopK transcoder's rate over an 8x SAE's of the same length. With random decoder rows,
    TRANSCODER_BOOST (each step up left more latents dead). Fitted rows leave fewer dead, which
    made room for FITTED_BOOST up to FITTED_TAPER[0] steps (3x beat 2x on FVU at 48-390 steps),
    back to TRANSCODER_BOOST from FITTED_TAPER[1] on (2x beat 3x at 1,000 steps, with fewer dead
    latents), log-linear between."""
    if not fitted:
        return TRANSCODER_BOOST
    lo, hi = FITTED_TAPER
    t = min(1.0, max(0.0, math.log(max(steps, 1) / lo) / math.log(hi / lo)))
    return FITTED_BOOST + t * (TRANSCODER_BOOST - FITTED_BOOST)


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


def _check(ok: bool, message: str) -> None:
    if not ok:
        raise ValueError(message)


def _finite(value: float) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(value)


@dataclass
class DictionaryConfig(_JsonMixin):
    """Shape and sparsity method of one SAE (hook_out None) or transcoder (hook_out set)."""

    d_in: int
    """input width (the hook's d_model)"""
    d_sae: int
    """number of latents"""
    arch: str = "topk"
    """activation: relu (L1), topk (+AuxK), batchtopk, jumprelu (L0)"""
    d_out: int | None = None
    """transcoder output width; None for an SAE (d_out = d_in)"""
    hook_in: str = ""
    """input hook, e.g. L15.resid_post or L15.mlp_in"""
    hook_out: str | None = None
    """transcoder target hook, e.g. L15.mlp_out; None for an SAE"""
    model_name: str = ""
    """the model the activations came from"""
    k: int = 32
    """topk / batchtopk: active latents per token"""
    skip: bool = False
    """transcoder: add a linear skip connection W_skip [d_in, d_out]"""
    encoder_init: str = "auto"
    """tied (W_enc = W_dec^T, SAEs only), random (unit-norm columns), standardized (random, then
    each latent's pre-activation scaled to mean 0 / variance 1 on the first batch, so every latent
    starts with an equal chance to be chosen), or auto = tied for an SAE, standardized for a
    transcoder (demo transcoder: 35% never-firing latents against 50% with random; RESULTS.md)"""
    decoder_init: str = "auto"
    """random (unit-norm rows) or fit: on the first batch, each latent's row points along the
    centred targets of the tokens TopK chooses it on, weighted by its value there (topk /
    batchtopk), so no latent starts by adding noise to its tokens' outputs; auto = fit for a
    TopK transcoder (never-firing latents 1.4-8x fewer on L3-L21 at 48-1,000 steps, and with
    the higher rate it allows, lower FVU on all 14 grid cells; RESULTS.md, "Transcoder
    decoders fitted at the start"), random otherwise (an SAE's encoder starts tied to its
    decoder)"""
    sparsity: str = "l1"
    """relu: l1 (decoder-norm weighted) or kl (KL(rho || rho_hat) per latent)"""
    l1_coefficient: float = 5.0
    """relu: L1 coefficient"""
    kl_target: float = 0.01
    """relu with kl: target firing probability rho"""
    kl_coefficient: float = 1.0
    """relu with kl: KL coefficient"""
    auxk_alpha: float = 1 / 32
    """topk / batchtopk: weight of the AuxK loss that revives dead latents"""
    auxk_k: int | None = None
    """topk / batchtopk: dead latents AuxK uses per token (None: d_out // 2, Gao et al. 2024)"""
    auxk_stride: int = 4
    """topk / batchtopk: AuxK reconstructs the error of every n-th token of a batch (1: every
    token). Its cost grows with the dead latents times the tokens read; a quarter cut that cost
    up to 4x at the same FVU and dead fraction (RESULTS.md, "AuxK on a quarter of the batch").
    A stride, not the first rows, so that ranks whose batch sizes it divides read together what
    one process reads of their concatenated batch"""
    revive: str = "auto"
    """topk / batchtopk: how latents declared dead get back into play. none: AuxK alone (it
    reads ReLU'd pre-activations, so a latent negative on every token gets no gradient and stays
    dead); recenter: a dead latent negative on the whole batch gets its b_enc raised until it is
    positive on its top k/d_sae of the batch, so AuxK trains it; fire: raised further, to the
    batch's typical k-th largest pre-activation, so TopK itself picks it on those tokens; linear:
    AuxK on un-ReLU'd pre-activations. auto = recenter for transcoders, none for SAEs: on four
    transcoder workloads (L3, L9, L15 x 49k-800k tokens) recenter cut never-firing latents by
    40-75% at FVU within 0.16% of none; linear cut more but cost L15 0.9-2% FVU; SAEs train
    with ~0% dead latents (RESULTS.md, "Dead transcoder latents")"""
    matryoshka: tuple[int, ...] | None = None
    """topk / batchtopk: Matryoshka prefix sizes, e.g. 256,1024,4608 (last = d_sae): latents
    0..m-1 are trained to reconstruct on their own for each m, loss summed over the prefixes
    (Bussmann et al. 2025), so early latents keep general features; None: a plain dictionary"""
    threshold_ema: float | None = None
    """batchtopk: EMA decay of the inference threshold; None: a window of 10% of the run's
    steps, 1 to 100 (0.9 at 100 steps, 0.99 from 1,000): at 0.99 a 100-step run's threshold
    still held its early, higher values and inference fired L0 ~20 for k 32 (0.9: L0 30.6 and
    5-18% lower FVU on L3/L9/L15; RESULTS.md, "BatchTopK's threshold window")"""
    decode: str = "auto"
    """topk / batchtopk training decode path: auto, sparse or dense"""
    select: str = "auto"
    """dtype of the encoder product that only chooses the TopK latents in sparse training (the
    chosen values are recomputed exactly in fp32): auto = bf16 on CPUs with AMX (about 4x the fp32
    rate there), else fp32"""
    l0_coefficient: float = 1.0
    """jumprelu: L0 coefficient"""
    jumprelu_bandwidth: float = 0.1
    """jumprelu: width of the straight-through estimator's window. Inputs are normalised to mean
    norm sqrt(d_in), so pre-activations are O(1) and a 0.1 window gets gradient from the start
    (SAELens's 0.001 left thresholds far below the pre-activations for hundreds of steps)"""
    jumprelu_init_threshold: float = 0.5
    """jumprelu: initial threshold"""
    jumprelu_threshold_lr: float | None = None
    """jumprelu: multiplier of the learning rate for the thresholds (trained as log_threshold);
    None = 4 / (lr x steps), at least 1. Adam moves a parameter by about its lr per step
    whatever its gradient, so at the shared lr (1.9e-3 at 8x) a threshold moves at most x1.5 in
    200 steps and the L0 coefficient hardly changes L0 (77-89 for coefficients 0.3-7,200 on
    SmolLM2 L9); None lets it move e^4 over any run: 10.6 in 200 steps at 8x, where L0 follows
    the coefficient (L9: 60 / 35 / 24 / 11 at 0.3 / 0.6 / 1 / 4; L15: 70 / 24 at 0.3 / 1),
    and 1 (the shared lr, as SAELens's trainer) from ~2,100 steps, since 10 in a long run cost
    FVU (planted data, 1,600 steps; RESULTS.md, "JumpReLU thresholds' learning rate")"""

    def __post_init__(self) -> None:
        _check(self.arch in ARCHS, f"unknown arch {self.arch!r}; choose one of {', '.join(ARCHS)}")
        _check(
            self.d_in > 0 and self.d_sae > 0,
            f"d_in and d_sae must be positive, got {self.d_in}, {self.d_sae}",
        )
        _check(self.d_out is None or self.d_out > 0, f"d_out must be positive, got {self.d_out}")
        if self.arch in ("topk", "batchtopk"):
            _check(0 < self.k <= self.d_sae, f"k must be in 1..d_sae={self.d_sae}, got {self.k}")
        if self.matryoshka is not None:
            self.matryoshka = tuple(int(m) for m in self.matryoshka)
            m = self.matryoshka
            _check(
                self.arch in ("topk", "batchtopk"),
                f"matryoshka applies to topk and batchtopk, not {self.arch!r}",
            )
            _check(
                len(m) > 0
                and m[0] > 0
                and all(a < b for a, b in itertools.pairwise(m))
                and m[-1] == self.d_sae,
                f"matryoshka prefix sizes must increase and end at d_sae={self.d_sae}, got "
                f"{','.join(map(str, m))}; e.g. {self.d_sae // 16},{self.d_sae // 4},{self.d_sae}",
            )
        _check(self.sparsity in ("l1", "kl"), f"sparsity must be l1 or kl, got {self.sparsity!r}")
        _check(
            self.decode in ("auto", "sparse", "dense"),
            f"decode must be auto, sparse or dense, got {self.decode!r}",
        )
        _check(
            self.select in ("auto", "bf16", "fp32"),
            f"select must be auto, bf16 or fp32, got {self.select!r}",
        )
        _check(
            self.encoder_init in ("auto", "tied", "random", "standardized"),
            f"encoder_init must be auto, tied, random or standardized, got {self.encoder_init!r}",
        )
        _check(
            self.decoder_init in ("auto", "random", "fit"),
            f"decoder_init must be auto, random or fit, got {self.decoder_init!r}",
        )
        _check(
            self.decoder_init != "fit" or self.arch in ("topk", "batchtopk"),
            f"decoder_init='fit' needs topk or batchtopk latents, not {self.arch!r}; "
            "use decoder_init='random' (--decoder-init random)",
        )
        _check(
            self.encoder_init != "tied" or self.out_dim == self.d_in,
            f"encoder_init='tied' needs d_out == d_in (got {self.out_dim} != {self.d_in}); "
            "use 'standardized' or 'random'",
        )
        for name in ("l1_coefficient", "kl_coefficient", "l0_coefficient", "auxk_alpha"):
            value = getattr(self, name)
            _check(_finite(value) and value >= 0, f"{name} must be >= 0 and finite, got {value}")
        _check(0 < self.kl_target < 1, f"kl_target must be in (0, 1), got {self.kl_target}")
        _check(
            self.jumprelu_bandwidth > 0 and self.jumprelu_init_threshold > 0,
            "jumprelu_bandwidth and jumprelu_init_threshold must be positive",
        )
        _check(
            self.jumprelu_threshold_lr is None
            or (_finite(self.jumprelu_threshold_lr) and self.jumprelu_threshold_lr > 0),
            f"jumprelu_threshold_lr must be positive and finite, got {self.jumprelu_threshold_lr}",
        )
        _check(
            self.threshold_ema is None or 0 <= self.threshold_ema < 1,
            f"threshold_ema must be in [0, 1) (unset: by run length), got {self.threshold_ema}",
        )
        _check(
            self.revive in REVIVE,
            f"revive must be one of {', '.join(REVIVE)}, got {self.revive!r}",
        )
        _check(self.auxk_k is None or self.auxk_k > 0, f"auxk_k must be positive: {self.auxk_k}")
        _check(self.auxk_stride >= 1, f"auxk_stride must be at least 1, got {self.auxk_stride}")

    @property
    def resolved_encoder_init(self) -> str:
        if self.encoder_init != "auto":
            return self.encoder_init
        return "standardized" if self.is_transcoder else "tied"

    @property
    def resolved_decoder_init(self) -> str:
        if self.decoder_init != "auto":
            return self.decoder_init
        return "fit" if self.is_transcoder and self.arch == "topk" else "random"

    @property
    def resolved_revive(self) -> str:
        if self.revive != "auto":
            return self.revive
        return "recenter" if self.is_transcoder else "none"

    @property
    def is_transcoder(self) -> bool:
        return self.hook_out is not None or (self.d_out is not None and self.d_out != self.d_in)

    @property
    def out_dim(self) -> int:
        return self.d_in if self.d_out is None else self.d_out

    @property
    def n_latents(self) -> int:
        """Latents the trainer's dead/dense counters cover (a CLT answers all its layers')."""
        return self.d_sae

    @property
    def hooks(self) -> list[str]:
        """Hooks this dictionary reads: input, then target if any."""
        return [self.hook_in] + ([self.hook_out] if self.hook_out else [])

    def io(self, table: dict):
        """(input, target or None) from a batch keyed by hook."""
        return table[self.hook_in], table[self.hook_out] if self.hook_out else None

    def dim(self, hook: str) -> int:
        """Width of one of ``hooks`` (the trainer scales it to mean norm sqrt(width))."""
        return self.d_in if hook == self.hook_in else self.out_dim

    def build(self) -> SparseDictionary:
        """A fresh ``SparseDictionary`` of this shape (what the trainer trains)."""
        from interp_bench.dictionaries.dictionary import SparseDictionary

        return SparseDictionary(self)

    @property
    def name(self) -> str:
        """Folder-friendly name, e.g. 'L8.resid_post-topk-4608'."""
        hook = self.hook_in or "x"
        if self.hook_out:
            hook = f"{hook}-to-{self.hook_out}"
        arch = f"matryoshka-{self.arch}" if self.matryoshka else self.arch
        return f"{hook}-{arch}-{self.d_sae}"


@dataclass(frozen=True)
class Schedule:
    """A run's step counts, resolved from its TrainConfig and the tokens one step takes; dead
    windows for transcoders (and CLTs) and for SAEs."""

    total_steps: int
    warmup_steps: int
    sparsity_warmup_steps: int
    dead_tokens: int
    sae_dead_tokens: int

    def dead_window(self, cfg: Any) -> int:
        """Tokens without firing after which a latent of ``cfg``'s dictionary is dead."""
        return self.dead_tokens if cfg.is_transcoder else self.sae_dead_tokens


@dataclass
class TrainConfig(_JsonMixin):
    """One training run (shared by all dictionaries trained on the same pass of reads).

    Settings that scale with the run's length default to None and are resolved by ``schedule``
    from the token budget and the tokens one step actually takes."""

    lr: float | None = None
    """learning rate (None: 1e-3 / sqrt(d_sae / 2**14), Gao et al.'s 1/sqrt(d_sae) scaling at 5x
    their constant; an SAE run shorter than 192 steps gets sqrt(192 steps / its steps) times that,
    at most 2x: short runs at the base rate stop short of sparsify; wider than 8x d_in, both the
    192 steps and the 2x scale with width / 8 (each latent is updated that much less often), so a
    short wide run learns as fast as an 8x one; a TopK transcoder or CLT gets
    2x that of an 8x SAE run of its length (2x from 192 steps on, up to 4x below 48); with decoder
    rows fitted at the start (decoder_init, the TopK transcoder default) 3x up to 390 steps (6x
    below 48), tapering to 2x at 1,000 and on (3x beat 2x on FVU at 48-390 steps on L3-L21, 2x
    beat 3x at 1,000; quality grid and bench_clt, issues 10 and 13, benchmarks/RESULTS.md)"""
    batch_size: int = 4096
    """tokens per step per rank (the reader's batch; the trainer counts what it is given)"""
    tokens: int = 10_000_000
    """training tokens; training stops once this many have been seen"""
    warmup_steps: int | None = None
    """linear lr warm-up steps (None: min(100, 5% of the run's steps))"""
    decay_start: float = 0.8
    """fraction of training after which the lr decays to 0"""
    lr_decay: str = "linear"
    """shape of that decay: linear or cosine"""
    grad_clip: float = 0.0
    """max gradient norm per dictionary; 0 disables (the summed-MSE gradient norm is
    O(sqrt(d)), so a clip at 1 rescaled every step and slowed convergence)"""
    seed: int = 0
    """initialisation seed (every dictionary starts as it would if trained alone)"""
    checkpoint_every: int = 1000
    """steps between checkpoints; 0 disables intermediate ones (the final state is still saved)"""
    log_every: int = 50
    """steps between metrics.jsonl lines"""
    dead_tokens: int | None = None
    """a latent is dead after not firing on this many tokens (None: min(10M, 10% of tokens),
    and for SAEs at most SAE_DEAD_WINDOW = 20,480, never under one step)"""
    sparsity_warmup_steps: int | None = None
    """steps over which the L1 / L0 / KL coefficient warms up (None: min(1000, 5% of steps))"""
    adam_beta1: float = 0.8
    """Adam beta1"""
    adam_beta2: float = 0.95
    """Adam beta2. Lower than the usual (0.9, 0.999): a few massive-activation tokens give rare
    gradient spikes, and a slow second-moment average keeps the step size small for long after
    each one (sweep_train, seeds_train; benchmarks/RESULTS.md)"""
    adam_eps: float = 1e-8
    """Adam epsilon"""
    weight_average: float = 0.0
    """evaluate and save an exponential moving average of the iterates instead of the last one:
    the fraction of the run's steps the average remembers (decay 1 - 1/(fraction * steps) per
    step), 0 disables. It starts at the initial weights (after the data init) rather than after
    warm-up: their share at the end is exp(-1/fraction), 2% at 0.25, and no run length needs a
    second setting. Decoder rows of the average are renormalised with each row's norm moved into
    its latent's encoder column, b_enc and threshold: exact for ReLU and JumpReLU latents; TopK's
    per-token choice and BatchTopK's one threshold can shift, within 0.0003 FVU of the average as
    it is on the --small cache (benchmarks/RESULTS.md)"""
    autocast: bool = False
    """bf16 autocast of the forward on CUDA"""
    normalize_inputs: bool = True
    """scale inputs and targets to mean norm sqrt(d) while training, folded into the saved
    weights (so one learning rate fits every hook)"""
    init_b_dec: str = "mean"
    """b_dec from the first batch: mean, median (geometric) or zero"""
    device: str | None = None
    """cpu, cuda, cuda:1 (None: cuda when present)"""
    wandb: str | None = None
    """wandb project: metrics also go to wandb (needs `pip install wandb`); metrics.jsonl is
    always written"""
    extra: dict[str, Any] = field(default_factory=dict)
    """free-form notes saved with the run"""

    def __post_init__(self) -> None:
        _check(
            self.lr is None or (_finite(self.lr) and self.lr > 0),
            f"lr must be positive, got {self.lr}",
        )
        _check(self.batch_size > 0, f"batch_size must be positive, got {self.batch_size}")
        _check(
            _finite(self.tokens) and self.tokens > 0, f"tokens must be positive, got {self.tokens}"
        )
        for name in ("warmup_steps", "sparsity_warmup_steps", "checkpoint_every"):
            value = getattr(self, name)
            _check(value is None or value >= 0, f"{name} must be >= 0, got {value}")
        _check(self.log_every > 0, f"log_every must be positive, got {self.log_every}")
        _check(
            self.dead_tokens is None or self.dead_tokens > 0,
            f"dead_tokens must be positive, got {self.dead_tokens}",
        )
        _check(0 <= self.decay_start <= 1, f"decay_start must be in [0, 1]: {self.decay_start}")
        _check(
            self.lr_decay in ("linear", "cosine"),
            f"lr_decay must be linear or cosine, got {self.lr_decay!r}",
        )
        _check(_finite(self.grad_clip) and self.grad_clip >= 0, "grad_clip must be >= 0")
        _check(
            0 <= self.adam_beta1 < 1 and 0 <= self.adam_beta2 < 1,
            f"Adam betas must be in [0, 1), got {self.adam_beta1}, {self.adam_beta2}",
        )
        _check(
            _finite(self.weight_average) and 0 <= self.weight_average < 1,
            f"weight_average must be in [0, 1) (0 disables), got {self.weight_average}",
        )
        _check(
            self.init_b_dec in ("mean", "median", "zero"),
            f"init_b_dec must be mean, median or zero, got {self.init_b_dec!r}",
        )

    def auto_lr(
        self,
        d_sae: int,
        transcoder: bool = False,
        arch: str = "topk",
        steps: int | None = None,
        d_in: int | None = None,
        fitted: bool = True,
    ) -> float:
        """``lr``, or the default rule: 1e-3 / sqrt(d_sae / 2**14) (Gao et al.'s width scaling),
        times ``short_run_boost`` (which needs ``d_in`` to see how wide the dictionary is and,
        for a transcoder, whether its decoder rows start ``fitted``)."""
        if self.lr is not None:
            return self.lr
        width = d_sae / d_in if d_in else LR_FULL_WIDTH
        boost = self.short_run_boost(transcoder, arch, steps, width, fitted)
        return 1e-3 / (d_sae / 2**14) ** 0.5 * boost

    def dictionary_lr(self, cfg: Any, steps: int | None = None) -> float:
        """``auto_lr`` for one dictionary's config (a DictionaryConfig or CrossLayerConfig): its
        width, kind, latents and decoder start, in a run of ``steps`` (None: as batch_size
        implies)."""
        fitted = cfg.resolved_decoder_init == "fit"
        return self.auto_lr(cfg.d_sae, cfg.is_transcoder, cfg.arch, steps, cfg.d_in, fitted)

    def short_run_boost(
        self,
        transcoder: bool = False,
        arch: str = "topk",
        steps: int | None = None,
        width: float = LR_FULL_WIDTH,
        fitted: bool = True,
    ) -> float:
        """How much faster than the base rate a run learns. An SAE run of few steps:
        sqrt(LR_FULL_STEPS / steps), between 1 and LR_MAX_BOOST (a short run at the base rate
        stops far from its plateau, behind sparsify's large sign steps). A TopK transcoder or
        cross-layer transcoder: ``transcoder_boost`` times an 8x SAE's factor for its length
        (once `revive="recenter"` kept dead latents trainable, 2x beat 1x on FVU on all four
        per-layer workloads, 48-390 steps, and on both CLT workloads, also on CE recovered; at
        48 and 100 steps 3-4x beat 2x on L9 and L15 by 4-19%; each step up left more latents
        dead, until fitted decoder rows, ``decoder_init``, cut them 1.4-8x and made room for 3x
        up to 390 steps). BatchTopK transcoders, JumpReLU and ReLU keep the base rate: no grid
        measured them (benchmarks/RESULTS.md)."""
        if arch not in BOOSTED_ARCHS or (transcoder and arch != "topk"):
            return 1.0
        # The run's real step count when known (Schedule.total_steps: every rank's tokens per
        # step), else the one batch_size implies.
        steps = steps or max(1, math.ceil(self.tokens / self.batch_size))
        if transcoder:  # the width part was measured on SAEs only
            return transcoder_boost(steps, fitted) * min(
                LR_MAX_BOOST, max(1.0, (LR_FULL_STEPS / steps) ** 0.5)
            )
        # A dictionary w times wider than LR_FULL_WIDTH updates each latent w times less often,
        # so it needs w times the steps, and the cap rises to match: a short wide run learns at
        # the rate of an 8x dictionary of the same length until Gao's scaling takes over.
        w = max(1.0, width / LR_FULL_WIDTH)
        return min(LR_MAX_BOOST * w**0.5, max(1.0, (LR_FULL_STEPS * w / steps) ** 0.5))

    def schedule(self, step_tokens: int | None = None) -> Schedule:
        """Step counts for steps of ``step_tokens`` tokens (all ranks together; default
        ``batch_size``). A short run must not spend itself warming up, so the warm-ups are
        capped at 5% of its steps, and the dead window at 10% of its tokens (an SAE's also at
        SAE_DEAD_WINDOW)."""
        step_tokens = step_tokens or self.batch_size
        steps = max(1, math.ceil(self.tokens / step_tokens))
        short = max(1, steps // 20)
        window, sae_window = self.dead_tokens, self.dead_tokens
        if window is None:
            window = min(10_000_000, max(self.tokens // 10, step_tokens))
            sae_window = max(min(window, SAE_DEAD_WINDOW), step_tokens)
        return Schedule(
            total_steps=steps,
            warmup_steps=self.warmup_steps if self.warmup_steps is not None else min(100, short),
            sparsity_warmup_steps=(
                self.sparsity_warmup_steps
                if self.sparsity_warmup_steps is not None
                else min(1000, short)
            ),
            dead_tokens=window,
            sae_dead_tokens=sae_window,
        )
