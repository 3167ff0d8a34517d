"""A latent's direct effect on the next-token logits, per latent and per example.

The direct path is the latent's decoder write travelling the residual stream straight to the
unembedding, with the final norm frozen at its value on that token (as attribution work does):

    delta_logits = act / scale_t * (centre(write) * ln_final.w) @ W_U

`scale_t` is the final norm's denominator at token t (`ln_final.hook_scale`: sqrt(var + eps)
for LayerNorm, sqrt(mean square + eps) for RMSNorm), `centre` subtracts the mean over d_model
(LayerNorm only: its centring is linear) and `ln_final.w` is the norm's weight when it is not
folded into W_U. Biases cancel in the difference. So an example changes the size of the effect
(act / scale_t) and which token is "next", never the ranking of promoted tokens: that is the
latent's own, `W_dir @ W_U`.

What a latent writes into the residual stream (`residual_writes`):

* resid_pre / resid_post / mlp_out / attn_out: its decoder row;
* z (per-head values before W_O): the decoder row read per head through that layer's W_O;
* mlp_in (and anything else read, not written): no direct effect, nothing is shown.
"""

from __future__ import annotations

import contextlib
import re
import weakref

import torch
from torch import Tensor

from interp_bench.circuits.replacement import hooked

WRITES = ("resid_pre", "resid_post", "mlp_out", "attn_out")
SCALE_HOOK = "ln_final.hook_scale"
_SCALES: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # model -> {tokens: scales}


class _Stop(Exception):
    """Raised from the final norm's hook: nothing after it (the unembedding) is needed."""


def unembedding(model) -> tuple[Tensor, Tensor | None] | None:
    """The model's W_U `[d_model, vocab]` and the final norm's elementwise weight, if it has one."""
    W_U = getattr(model, "W_U", None)
    if W_U is None:
        return None
    ln = getattr(model, "ln_final", None)
    w = None
    for name in ("w", "weight"):
        cand = getattr(ln, name, None) if ln is not None else None
        if isinstance(cand, Tensor) and cand.ndim == 1 and cand.numel() == W_U.shape[0]:
            w = cand
            break
    return W_U.detach().float().cpu(), None if w is None else w.detach().float().cpu()


def residual_writes(dictionary, model) -> tuple[Tensor, str] | None:
    """Each latent's write into the residual stream `[d_sae, d_model]` and how it was read, or
    None when its decoder does not write there (mlp_in) or the model lacks what is needed."""
    cfg = dictionary.cfg
    m = re.fullmatch(r"L(\d+)\.(\w+)", cfg.hook_out or cfg.hook_in or "")
    if m is None:
        return None
    layer, kind = int(m.group(1)), m.group(2)
    W = dictionary.W_dec.detach().float().cpu()
    if kind in WRITES:
        return W, "W_dec"
    if kind == "z":
        try:
            W_O = model.blocks[layer].attn.W_O.detach().float().cpu()  # [heads, d_head, d_model]
        except (AttributeError, IndexError, TypeError):
            return None
        if W_O.ndim != 3 or W.shape[1] != W_O.shape[0] * W_O.shape[1]:
            return None
        return torch.einsum("fhd,hdm->fm", W.view(W.shape[0], *W_O.shape[:2]), W_O), "W_dec @ W_O"
    return None


def norm_kind(model) -> str | None:
    return getattr(getattr(model, "cfg", None), "normalization_type", None)


def unembed_directions(writes: Tensor, model) -> tuple[Tensor, Tensor, str] | None:
    """(directions the unembedding reads with the final norm's scale frozen `[d_sae, d_model]`,
    W_U, a note saying what was applied), or None without an unembedding of that width."""
    unembed = unembedding(model)
    if unembed is None or unembed[0].shape[0] != writes.shape[1]:
        return None
    W_U, ln_w = unembed
    note = []
    if (norm_kind(model) or "").startswith("LN"):
        writes = writes - writes.mean(-1, keepdim=True)
        note.append("centred")
    if ln_w is not None:
        writes = writes * ln_w
        note.append("* ln_final.w")
    return writes, W_U, " ".join(note)


def final_norm_scales(
    model, tokens: Tensor, seq: Tensor, pos: Tensor, rows: Tensor, batch_seqs: int = 16
) -> Tensor | None:
    """The final norm's denominator at each stream row in `rows` (NaN where the stream does not
    hold its sequence from position 0), from batched forwards over only the sequences that hold
    those rows, stopped at the final norm. None when the model has no such hook."""
    out = torch.full((rows.numel(),), float("nan"))
    if norm_kind(model) is None:
        return out.fill_(1.0)  # no final norm: nothing to freeze
    if SCALE_HOOK not in getattr(model, "hook_dict", {}):
        return None
    uniq, counts = torch.unique_consecutive(seq, return_counts=True)
    starts = torch.cumsum(counts, 0) - counts
    # a sequence id may recur in a stream only if it was cut; the first run is the one we read
    where = {}
    for s, b, c in zip(uniq.tolist(), starts.tolist(), counts.tolist(), strict=True):
        where.setdefault(s, (b, c))
    starts_at_0 = {s: int(pos[b]) == 0 for s, (b, _) in where.items()}
    need: dict[int, list[int]] = {}
    for k, (r, s) in enumerate(zip(rows.tolist(), seq[rows].tolist(), strict=True)):
        b, c = where[s]
        if b <= r < b + c and starts_at_0[s]:
            need.setdefault(s, []).append(k)
    # The scales depend on the tokens only (models here are frozen): dictionaries analysed on
    # the same text (the demo's SAE and transcoder) share one forward per sequence.
    known = _SCALES.setdefault(model, {})
    key = {s: tokens[where[s][0] : where[s][0] + where[s][1]].numpy().tobytes() for s in need}
    by_len: dict[int, list[int]] = {}
    for s in need:
        if key[s] not in known:
            by_len.setdefault(where[s][1], []).append(s)
    device = next(model.parameters()).device
    for length, group in by_len.items():
        for i in range(0, len(group), batch_seqs):
            part = group[i : i + batch_seqs]
            batch = torch.stack([tokens[where[s][0] : where[s][0] + length] for s in part])
            scale = _scale_of(model, batch.long().to(device))
            for j, s in enumerate(part):
                known[key[s]] = scale[j]
    for s, ks in need.items():
        ks = torch.tensor(ks)
        out[ks] = known[key[s]][rows[ks] - where[s][0]]
    return out


def _scale_of(model, batch: Tensor) -> Tensor:
    got: list[Tensor] = []

    def grab(act, hook):
        got.append(act.detach().float().reshape(act.shape[0], act.shape[1]).cpu())
        raise _Stop

    with contextlib.suppress(_Stop), hooked(model, [(SCALE_HOOK, grab)]):
        model(batch)
    if not got:
        raise RuntimeError(f"the forward never reached {SCALE_HOOK}")
    return got[0]


def next_token_effects(
    directions: Tensor, W_U: Tensor, latents: Tensor, next_ids: Tensor, chunk: int = 8192
) -> Tensor:
    """`directions[latent] @ W_U[:, next]` per example (unit activation, unit norm scale)."""
    out = torch.empty(latents.numel())
    W_T = W_U.T
    for s in range(0, latents.numel(), chunk):
        sl = slice(s, s + chunk)
        out[sl] = (directions[latents[sl]] * W_T[next_ids[sl]]).sum(-1)
    return out


def example_effects(
    directions: Tensor,
    W_U: Tensor,
    model,
    top_index: Tensor,
    top_acts: Tensor,
    tokens: Tensor,
    seq: Tensor,
    pos: Tensor,
) -> dict[str, Tensor] | None:
    """Per top example `[d_sae, n]`: `top_direct_mult` = act / norm scale (what the latent's
    promoted/suppressed values are multiplied by there), `top_next_ids` (-1: the sequence ends)
    and `top_next_effect`, the direct effect on that next token's logit (NaN where unknown)."""
    shape = top_index.shape
    flat = top_index.reshape(-1)
    ok = (flat >= 0).nonzero().squeeze(1)
    rows = flat[ok]
    scales = final_norm_scales(model, tokens, seq, pos, rows)
    if scales is None:
        return None
    n = tokens.numel()
    nxt = (rows + 1).clamp(max=n - 1)
    has_next = (rows + 1 < n) & (seq[nxt] == seq[rows])
    next_ids = torch.where(has_next, tokens[nxt].long(), -1)
    mult = top_acts.reshape(-1)[ok].float() / scales
    latents = torch.div(ok, shape[1], rounding_mode="floor")
    eff = torch.full((ok.numel(),), float("nan"))
    sel = has_next.nonzero().squeeze(1)
    eff[sel] = mult[sel] * next_token_effects(directions, W_U, latents[sel], next_ids[sel])
    full = {
        "top_direct_mult": torch.full((flat.numel(),), float("nan")),
        "top_next_ids": torch.full((flat.numel(),), -1, dtype=torch.int32),
        "top_next_effect": torch.full((flat.numel(),), float("nan")),
    }
    full["top_direct_mult"][ok] = mult
    full["top_next_ids"][ok] = next_ids.int()
    full["top_next_effect"][ok] = eff
    return {k: v.view(shape) for k, v in full.items()}
