"""SparseDictionary: one module for SAEs (reconstruct x) and transcoders (read one hook, predict
another), with ReLU/L1, TopK, BatchTopK and JumpReLU activations and an optional linear skip.

    pre  = (x - b_dec) @ W_enc + b_enc        # SAE; a transcoder does not subtract b_dec
    f    = activation(pre)                     # [B, d_sae]
    out  = f @ W_dec + b_dec (+ x @ W_skip)   # [B, d_out]

Weights use SAELens's shapes and names, so ``save`` writes a folder SAELens loads directly.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import NamedTuple

import torch
from torch import Tensor, nn

from interp_bench.config import DictionaryConfig
from interp_bench.dictionaries.activations import make_activation
from interp_bench.dictionaries.auxk import AuxChoice
from interp_bench.dictionaries.evaluate import batch_fvu
from interp_bench.dictionaries.matryoshka import matryoshka_loss
from interp_bench.dictionaries.revive import recenter_dead
from interp_bench.dictionaries.topk import select_in_bf16


class ForwardOutput(NamedTuple):
    """One training forward (``SparseDictionary.loss``). ``loss`` is what to back-propagate."""

    loss: Tensor
    mse: Tensor  # squared error summed over d_out, mean over tokens
    aux: Tensor  # AuxK loss (topk / batchtopk), already scaled by the dead fraction, pre-alpha
    sparsity: Tensor  # the sparsity term added to the loss (coefficient and warm-up applied)
    l0: Tensor  # mean active latents per token (scalar)
    fire_counts: Tensor  # long [d_sae]: tokens of the batch each latent fired on
    fvu: Tensor  # fraction of variance unexplained on this batch (scalar)


class SparseDictionary(nn.Module):
    """Sparse dictionary (see module docstring). ``cfg.hook_out`` set (or d_out != d_in) makes it
    a transcoder. All methods accept ``[..., d_in]`` inputs."""

    def __init__(
        self,
        cfg: DictionaryConfig,
        *,
        device: torch.device | str | None = None,
        dtype: torch.dtype = torch.float32,
    ) -> None:
        super().__init__()
        self.cfg = cfg
        self.is_transcoder = cfg.is_transcoder
        d_in, d_sae, d_out = cfg.d_in, cfg.d_sae, cfg.out_dim
        kw = {"device": device, "dtype": dtype}

        W_dec = torch.randn(d_sae, d_out, **kw)
        W_dec /= W_dec.norm(dim=1, keepdim=True)
        if cfg.resolved_encoder_init == "tied":
            W_enc = W_dec.t().clone()
        else:
            W_enc = torch.randn(d_in, d_sae, **kw)
            W_enc /= W_enc.norm(dim=0, keepdim=True)
        # Stored latent-major as W_enc_t [d_sae, d_in] (W_enc is its transposed view): the
        # sparse paths read and write one latent's encoder row at a time.
        self.W_enc_t = nn.Parameter(W_enc.t().contiguous())
        self.b_enc = nn.Parameter(torch.zeros(d_sae, **kw))
        self.W_dec = nn.Parameter(W_dec)
        self.b_dec = nn.Parameter(torch.zeros(d_out, **kw))
        self.W_skip = nn.Parameter(torch.zeros(d_in, d_out, **kw)) if cfg.skip else None
        # Registered last so parameters() lists W_enc_t .. W_skip first, as before the
        # activations owned their thresholds (optimizer state order).
        self.act = make_activation(cfg).to(**kw)
        # Input/output scales folded into the weights so far (for the saved metadata).
        self.folded_scales: tuple[float, float] = (1.0, 1.0)

    # ----------------------------------------------------------------- properties
    @property
    def W_enc(self) -> Tensor:
        """Encoder weights ``[d_in, d_sae]`` (SAELens's shape), a view of ``W_enc_t``."""
        return self.W_enc_t.t()

    @property
    def d_in(self) -> int:
        return self.cfg.d_in

    @property
    def d_sae(self) -> int:
        return self.cfg.d_sae

    @property
    def d_out(self) -> int:
        return self.cfg.out_dim

    @property
    def threshold(self) -> Tensor | None:
        """Per-latent inference threshold [d_sae] (jumprelu, batchtopk), else None."""
        return self.act.threshold

    @property
    def sparse_decode(self) -> bool:
        """Whether training decodes through the active latents only (topk / batchtopk)."""
        return self.act.sparse(self.d_sae)

    @property
    def b_shift(self) -> Tensor | None:
        """What the encoder subtracts from its input: b_dec for an SAE, nothing for a
        transcoder (its input and output live in different spaces)."""
        return None if self.is_transcoder else self.b_dec

    # ----------------------------------------------------------------- inference
    def _check(self, x: Tensor, width: int, what: str) -> None:
        if x.shape[-1] != width:
            raise ValueError(
                f"{what} has width {x.shape[-1]} but this dictionary expects {width} "
                f"(cfg d_in={self.d_in}, d_out={self.d_out}, hook_in={self.cfg.hook_in!r}); "
                "pass activations from the hook it was trained on"
            )

    def sae_in(self, x: Tensor) -> Tensor:
        """The encoder's input: ``x - b_dec`` for an SAE, ``x`` for a transcoder."""
        x = x.to(self.W_enc.dtype)
        return x if self.b_shift is None else x - self.b_shift

    def pre_acts(self, x: Tensor) -> Tensor:
        """Encoder pre-activations ``[..., d_sae]``."""
        self._check(x, self.d_in, "input")
        return self.sae_in(x) @ self.W_enc + self.b_enc

    def encode(self, x: Tensor) -> Tensor:
        """Dense latent activations ``[..., d_sae]`` of raw activations ``x [..., d_in]``."""
        return self.act.infer(self.pre_acts(x))

    def decode(self, f: Tensor) -> Tensor:
        """``f @ W_dec + b_dec``. The skip term needs x, so use ``forward`` for transcoders."""
        self._check(f, self.d_sae, "latents")
        return f.to(self.W_dec.dtype) @ self.W_dec + self.b_dec

    def forward(self, x: Tensor) -> Tensor:
        """Reconstruction (SAE) or prediction of the output hook (transcoder), ``[..., d_out]``."""
        out = self.act.decode_infer(self.pre_acts(x), self.W_dec) + self.b_dec
        if self.W_skip is not None:
            out = out + x.to(self.W_skip.dtype) @ self.W_skip
        return out

    # ----------------------------------------------------------------- training
    def auxk_choice(self, pre: Tensor, dead_mask: Tensor | None) -> AuxChoice | None:
        """The dead latents, each token's top k_aux of them (Gao et al. 2024, App. B.1), the
        loss scale and AuxK's stride over the batch; None when no latent is dead."""
        if dead_mask is None:
            return None
        dead = dead_mask.nonzero().flatten()
        if dead.numel() == 0:
            return None
        k_aux = self.cfg.auxk_k or self.d_out // 2
        scale = min(dead.numel() / k_aux, 1.0)
        k_aux = min(k_aux, dead.numel())
        dead_pre = pre.detach().index_select(1, dead)
        revive = self.cfg.resolved_revive
        if revive in ("recenter", "fire"):
            level = 0.0
            if revive == "fire":  # the typical k-th largest pre-activation: TopK picks them
                level = pre.detach().topk(self.cfg.k, dim=1).values[:, -1].median().item()
            share = self.cfg.k / self.d_sae
            dead_pre = recenter_dead(self.b_enc, pre, dead, dead_pre, share, level)
        local = dead_pre.topk(k_aux, dim=1, sorted=False).indices
        return AuxChoice(dead, dead_pre, local, scale, self.cfg.auxk_stride)

    @torch.no_grad()
    def selection_pre(self, sae_in: Tensor) -> Tensor:
        """Pre-activations that choose the sparse paths' latents (the values of the chosen ones
        are taken exactly in ``gather_pre``): bf16 where that is much faster (cfg.select)."""
        if select_in_bf16(self.cfg.select, sae_in.device) and sae_in.dtype == torch.float32:
            bf = torch.bfloat16
            return torch.addmm(self.b_enc.to(bf), sae_in.to(bf), self.W_enc.to(bf))
        return torch.addmm(self.b_enc, sae_in, self.W_enc)

    def loss(
        self,
        x: Tensor,
        target: Tensor | None = None,
        *,
        dead_mask: Tensor | None = None,
        warmup: float = 1.0,
    ) -> ForwardOutput:
        """Training loss on a batch ``x [B, d_in]`` (target ``[B, d_out]``, default x for an SAE).

        ``dead_mask`` (bool [d_sae]) enables AuxK where the activation uses it; ``warmup`` is
        the progress (0 -> 1) of the sparsity coefficient's warm-up.
        """
        self._check(x, self.d_in, "input")
        if target is None:
            if self.is_transcoder:
                raise ValueError("a transcoder needs a target (activations of cfg.hook_out)")
            target = x
        self._check(target, self.d_out, "target")
        x = x.reshape(-1, self.d_in).to(self.W_enc.dtype)
        target = target.reshape(-1, self.d_out).to(self.W_dec.dtype)
        enc = self.act.train_forward(self, x, dead_mask if self.act.auxk else None)
        recon = enc.recon
        skip = x @ self.W_skip if self.W_skip is not None else None
        if skip is not None:
            recon = recon + skip
        err = target - recon
        mse = err.pow(2).sum(-1).mean()
        recon_loss = mse
        if enc.prefixes is not None:  # Matryoshka: every prefix reconstructs on its own
            recon_loss = matryoshka_loss(enc.prefixes, target, skip)
        aux = enc.aux.loss(self.W_dec, err) if enc.aux is not None else mse.new_zeros(())
        sparsity = self.act.coefficient(warmup) * enc.penalty
        loss = recon_loss + self.cfg.auxk_alpha * aux + sparsity
        return ForwardOutput(
            loss, mse, aux, sparsity, enc.l0, enc.fire_counts, batch_fvu(mse.detach(), target)
        )

    # ----------------------------------------------------------------- constraints and init
    @property
    def unit_decoder(self) -> bool:
        """Whether training keeps decoder rows at unit norm (TopK, BatchTopK, ReLU with KL)."""
        return bool(self.act.unit_decoder)

    @torch.no_grad()
    def normalize_decoder(self) -> None:
        """Scale every decoder row (latent direction) to unit norm."""
        self.W_dec.div_(self.W_dec.norm(dim=1, keepdim=True).clamp_min(1e-12))

    @torch.no_grad()
    def fold_decoder_norms(self) -> SparseDictionary:
        """Scale decoder rows to unit norm and each latent's encoder column, b_enc and threshold
        by its row's old norm c, in place: (c f) (W_dec / c) = f W_dec, exact wherever a latent
        scaled by c fires when the original does (ReLU, JumpReLU); TopK's per-token choice among
        latents of unequal c can differ. For an average of unit-norm iterates (weight_average)."""
        c = self.W_dec.norm(dim=1).clamp_min(1e-12)
        self.W_dec.div_(c[:, None])
        self.W_enc_t.mul_(c[:, None])
        self.b_enc.mul_(c)
        self.act.scale_threshold(c)
        return self

    @torch.no_grad()
    def remove_parallel_grad(self) -> None:
        """Drop the part of W_dec's gradient along each (unit) decoder row, so Adam moves rows
        along the sphere and the renormalisation after the step changes little."""
        g, W = self.W_dec.grad, self.W_dec
        if g is None:
            return
        # g -= (g.W / |W|^2) W row by row, in place.
        along = torch.linalg.vecdot(g, W).unsqueeze(1)
        along /= torch.linalg.vector_norm(W, dim=1, keepdim=True).square().clamp_min(1e-24)
        g.addcmul_(along, W, value=-1)

    def post_backward(self) -> None:
        """Call after ``loss.backward()``, before the optimizer step."""
        if self.unit_decoder:
            self.remove_parallel_grad()

    def post_step(self) -> None:
        """Call after the optimizer step."""
        if self.unit_decoder:
            self.normalize_decoder()

    @torch.no_grad()
    def init_from_data(self, x: Tensor, target: Tensor | None = None, method: str = "mean") -> None:
        """Set ``b_dec`` to the mean (or geometric median) of the reconstruction target, so the
        encoder starts from centred inputs; standardise the encoder where ``cfg.encoder_init``
        asks for it and fit the decoder where ``cfg.decoder_init`` does. ``x`` / ``target`` are a
        sample batch (normalised the same way as training batches)."""
        self._check(x, self.d_in, "input")
        y = x if target is None else target
        self._check(y, self.d_out, "target")
        y = y.reshape(-1, self.d_out).to(self.b_dec.dtype)
        if method == "mean":
            self.b_dec.copy_(y.mean(0))
        elif method == "median":
            self.b_dec.copy_(geometric_median(y))
        elif method != "zero":
            raise ValueError(f"init method must be mean, median or zero, got {method!r}")
        if self.cfg.resolved_encoder_init == "standardized":
            # A random encoder on anisotropic inputs gives a few latents far larger
            # pre-activations than the rest; TopK then never picks the rest and they die.
            pre = self.sae_in(x.reshape(-1, self.d_in)) @ self.W_enc
            std = pre.std(0).clamp_min(1e-6)
            self.W_enc.div_(std)
            self.b_enc.copy_(-pre.mean(0) / std)
        if self.cfg.resolved_decoder_init == "fit":
            pre = self.pre_acts(x.reshape(-1, self.d_in))
            rows, chosen = fitted_rows(pre, y - self.b_dec, self.cfg.k)
            self.W_dec[chosen] = rows[chosen].to(self.W_dec.dtype)

    @torch.no_grad()
    def fold_scale(self, in_scale: float, out_scale: float | None = None) -> SparseDictionary:
        """Fold the trainer's input normalisation into the weights, in place.

        Training saw ``x * in_scale`` and predicted ``target * out_scale``; afterwards the
        dictionary maps raw ``x`` to raw targets with identical latents (thresholds unchanged):
        W_enc *= in_scale, W_dec and b_dec /= out_scale, W_skip *= in_scale / out_scale. For an
        SAE the subtracted b_dec is then in raw units too, which is what makes this exact.
        """
        out_scale = in_scale if out_scale is None else out_scale
        if not self.is_transcoder and in_scale != out_scale:
            raise ValueError("an SAE reads and writes the same hook: in_scale must equal out_scale")
        self.W_enc.mul_(in_scale)
        self.W_dec.div_(out_scale)
        self.b_dec.div_(out_scale)
        if self.W_skip is not None:
            self.W_skip.mul_(in_scale / out_scale)
        a, b = self.folded_scales
        self.folded_scales = (a * in_scale, b * out_scale)
        return self

    def fold_hook_scales(self, scales: Mapping[str, float]) -> SparseDictionary:
        """``fold_scale`` with the trainer's scale per hook (1 for a hook it left as is)."""
        cfg = self.cfg
        s_in = scales.get(cfg.hook_in, 1.0)
        return self.fold_scale(s_in, scales.get(cfg.hook_out, 1.0) if cfg.hook_out else s_in)


@torch.no_grad()
def geometric_median(points: Tensor, iters: int = 100, tol: float = 1e-6) -> Tensor:
    """Weiszfeld's algorithm: the point minimising the summed distance to ``points [n, d]``;
    robust to the few huge-norm tokens (e.g. BOS) that drag the mean."""
    guess = points.mean(0)
    for _ in range(iters):
        w = 1.0 / (points - guess).norm(dim=1).clamp_min(1e-8)
        new = (w[:, None] * points).sum(0) / w.sum()
        if (new - guess).norm() <= tol * guess.norm().clamp_min(1e-8):
            return new
        guess = new
    return guess


@torch.no_grad()
def fitted_rows(pre: Tensor, targets: Tensor, k: int) -> tuple[Tensor, Tensor]:
    """Decoder rows ``[d_sae, d_out]`` that point along the centred ``targets [B, d_out]`` of the
    tokens each latent is among the top ``k`` of ``pre [B, d_sae]`` on, weighted by its value
    there (one least-squares step from zero), and which latents were chosen at all.

    A random row adds noise to every token its latent fires on, so the main loss first pushes
    the latent down and many never come back; an SAE avoids it by starting its encoder tied to
    its decoder, which a transcoder, reading one space and writing another, cannot do."""
    top = pre.topk(k, dim=1)
    f = torch.zeros(pre.shape, dtype=targets.dtype, device=targets.device)
    f.scatter_(1, top.indices, top.values.relu().to(targets.dtype))
    fit = f.T @ targets
    norm = fit.norm(dim=1, keepdim=True)
    return fit / norm.clamp_min(1e-30), norm.squeeze(1) > 0
