"""Steering with dictionary latents, and measuring what it does.

Two interventions, applied through transformer-lens hooks at the dictionary's output hook:
- add: `x + value * scale * W_dec[i]` (the latent's decoder direction at a coefficient);
- clamp: set latent i to `value * scale` while keeping the dictionary's error term, i.e.
  `x + decode(f_clamped) - decode(f) = x + (value * scale - f_i) * W_dec[i]`. Clamping a latent to
  its own value is therefore an exact no-op. For a transcoder, f is encoded from `hook_in` (the
  MLP's input) and the change lands on `hook_out` (the MLP's output). For a cross-layer
  transcoder (CLT) feature (source layer l, latent i), f is encoded from layer l's MLP input and
  the change lands on the MLP output of l and of every later layer the CLT covers, through its
  decoder block `decoder(l, L)[i]` (`Writer`): the same rule, one target per layer it writes to.

`scale` is typically the latent's max activation on some text (`latent_max_activation`), so that
values read as multiples of how strongly the latent normally fires.

Each batch row can carry its own intervention, so a whole coefficient sweep generates in one
batched loop. Effects are measured, not eyeballed: the change in log-probability of a target text,
and the KL divergence and cross-entropy change on neutral text (side effects).
"""

from __future__ import annotations

import html
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field

import torch
from torch import Tensor

from activation_cache.hooks import capture, flat
from interp_bench.analysis.splice import hook_point

MODES = ("add", "clamp")


@dataclass
class Steer:
    """One intervention on one latent. `positions`: None means every position after BOS."""

    latent: int
    mode: str = "add"
    value: float = 0.0
    scale: float = 1.0
    positions: tuple[int, ...] | None = None

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ValueError(f"unknown steering mode {self.mode!r}: use one of {MODES}")


@dataclass
class Writer:
    """What steering reads of a dictionary: where its latents are encoded from, how, and where
    they write through which decoder (`[d_sae, d_out]`), in forward order."""

    hook_in: str
    encode: Callable[[Tensor], Tensor]
    writes: list[tuple[str, Tensor]]

    @property
    def d_sae(self) -> int:
        return self.writes[0][1].shape[0]


def writer(dictionary, layer: int | None = None) -> Writer:
    """An SAE or transcoder (`layer` None), or layer `layer` (a model layer) of a CLT."""
    cfg = dictionary.cfg
    if not hasattr(cfg, "hooks_in"):
        if layer is not None:
            raise ValueError(
                "--layer picks a source layer of a cross-layer transcoder; this dictionary is "
                f"one-layer ({cfg.hook_in}): drop --layer"
            )
        return Writer(cfg.hook_in, dictionary.encode,
                      [(cfg.hook_out or cfg.hook_in, dictionary.W_dec.detach())])  # fmt: skip
    from interp_bench.analysis.crosslayer_index import clt_layers, layer_position

    if layer is None:
        raise ValueError(
            "this is a cross-layer transcoder: name the feature's source layer with --layer "
            f"(one of {','.join(map(str, clt_layers(dictionary)))})"
        )
    i = layer_position(dictionary, layer)
    writes = [(cfg.hooks_out[j], dictionary.decoder(i, j).detach())
              for j in range(i, dictionary.n_layers)]  # fmt: skip
    return Writer(cfg.hooks_in[i], lambda x: dictionary.encode_layer(i, x), writes)


def _check_latent(w: Writer, latent: int) -> None:
    if not 0 <= latent < w.d_sae:
        raise ValueError(
            f"latent {latent} out of range: this dictionary has latents 0..{w.d_sae - 1}"
        )


def steering_hooks(
    model,
    dictionary,
    steers: Sequence[Steer | None],
    *,
    skip_first: bool = True,
    layer: int | None = None,
) -> list[tuple[str, object]]:
    """Forward hooks applying `steers[r]` to batch row r (one steer broadcasts to every row).

    `None` rows run clean. With `skip_first`, `positions=None` leaves position 0 (BOS) alone.
    `layer`: the source layer of a CLT feature (a model layer), None for other dictionaries.
    """
    w = writer(dictionary, layer)
    steers = list(steers)
    for s in steers:
        if s is not None:
            _check_latent(w, s.latent)
    p_in = hook_point(model, w.hook_in)
    outs = [(hook_point(model, h), W) for h, W in w.writes]
    w_dec = outs[0][1]
    latents = torch.tensor([s.latent if s else 0 for s in steers], device=w_dec.device)
    clamp = torch.tensor([bool(s and s.mode == "clamp") for s in steers], device=w_dec.device)
    target = torch.tensor(
        [s.value * s.scale if s else 0.0 for s in steers], device=w_dec.device, dtype=w_dec.dtype
    )
    add = torch.where(clamp, torch.zeros_like(target), target)
    first = 1 if skip_first else 0
    captured: dict[str, Tensor] = {}

    def mask(seq_len: int) -> Tensor:
        m = torch.zeros(len(steers), seq_len, dtype=torch.bool)
        for r, s in enumerate(steers):
            if s is None:
                continue
            if s.positions is None:
                m[r, first:] = True
            else:
                m[r, [p for p in s.positions if p < seq_len]] = True
        return m.to(w_dec.device)

    def capture(act, hook):
        captured["x"] = flat(act)

    def amount_of(act: Tensor) -> Tensor:
        """Per (row, position): the coefficient of the latent's decoder rows."""
        rows, seq_len = act.shape[:2]
        if len(steers) not in (1, rows):
            raise ValueError(f"{len(steers)} steers for a batch of {rows} rows: give one per row")
        amount = add[:, None].expand(len(steers), seq_len)
        if clamp.any():
            x_in = captured.pop("x") if p_in.tl_name != outs[0][0].tl_name else act
            f = w.encode(x_in.to(w_dec.dtype))
            idx = latents[:, None, None].expand(f.shape[0], seq_len, 1)
            f_i = f.gather(-1, idx)[..., 0]
            amount = torch.where(clamp[:, None], target[:, None] - f_i, amount)
        return amount * mask(seq_len)

    def steer(k: int, W: Tensor):
        def fn(act4, hook):
            act = flat(act4)  # per-head `z` is steered in its flattened n_heads * d_head space
            if k == 0:  # the first write (the source layer's own): this forward's amount
                captured["amount"] = amount_of(act)
            delta = captured["amount"][..., None] * W[latents][:, None, :]
            return (act + delta.to(act.dtype)).view_as(act4)

        return fn

    hooks = [(p.tl_name, steer(k, W)) for k, (p, W) in enumerate(outs)]
    if p_in.tl_name != outs[0][0].tl_name:
        hooks.insert(0, (p_in.tl_name, capture))
    return hooks


def check_positions(positions: Sequence[int] | None, prompt_len: int) -> None:
    """Positions outside the prompt would steer nothing on the prompt and go unnoticed."""
    bad = [p for p in positions or () if not 0 <= p < prompt_len]
    if bad:
        raise ValueError(
            f"--positions {bad[0]} is outside the prompt, which has {prompt_len} tokens "
            f"(BOS included): give positions 0..{prompt_len - 1}"
        )


def _tokens(model, text: str, prepend_bos: bool) -> Tensor:
    if not text:
        raise ValueError("empty text: give a non-empty --prompt / --target")
    return model.to_tokens(text, prepend_bos=prepend_bos)


def _starts_with_bos(model, tokens: Tensor) -> bool:
    bos = getattr(model.tokenizer, "bos_token_id", None)
    return bos is not None and bool((tokens[:, 0] == bos).all())


@torch.inference_mode()
def generate(
    model,
    prompt: str | Tensor,
    *,
    hooks: Sequence = (),
    n_rows: int = 1,
    max_new_tokens: int = 24,
    temperature: float = 0.0,
    top_k: int | None = None,
    seed: int = 0,
    on_token: Callable[[int], object] | None = None,
) -> Tensor:
    """Tokens `[n_rows, prompt + max_new_tokens]`: greedy at temperature 0, else sampled under
    `seed` (common random numbers across rows, so steered rows differ from the clean row only
    through the steering). No KV cache, so hooks see every absolute position at every step.
    `on_token(1)` is called after each generated position (a progress bar's `update`)."""
    tokens = _tokens(model, prompt, True) if isinstance(prompt, str) else prompt
    tokens = tokens.to(next(model.parameters()).device).expand(n_rows, -1).clone()
    gen = torch.Generator(device=tokens.device).manual_seed(seed)
    for _ in range(max_new_tokens):
        logits = model.run_with_hooks(tokens, fwd_hooks=list(hooks))[:, -1].float()
        if temperature <= 0:
            nxt = logits.argmax(-1, keepdim=True)
        else:
            logits = logits / temperature
            if top_k is not None:
                kth = logits.topk(top_k, dim=-1).values[:, -1:]
                logits = logits.masked_fill(logits < kth, float("-inf"))
            # Gumbel-max with one noise draw shared by all rows: a row's sample depends only on
            # its own logits, so rows with equal logits agree and batched == single-row.
            u = torch.rand(logits.shape[-1], generator=gen, device=logits.device)
            gumbel = -torch.log(-torch.log(u.clamp_min(1e-20)))
            nxt = (logits + gumbel).argmax(-1, keepdim=True)
        tokens = torch.cat([tokens, nxt], dim=1)
        if on_token is not None:
            on_token(1)
    return tokens


@torch.inference_mode()
def target_logprob(model, prompt: str, target: str, *, hooks: Sequence = (), n_rows: int = 1):
    """Sum of log p(target tokens | prompt), teacher-forced, per batch row: `[n_rows]`."""
    p = _tokens(model, prompt, True)
    t = _tokens(model, target, False)
    seq = torch.cat([p, t], dim=1).to(next(model.parameters()).device).expand(n_rows, -1)
    logits = model.run_with_hooks(seq, fwd_hooks=list(hooks))
    logp = torch.log_softmax(logits[:, p.shape[1] - 1 : -1].float(), dim=-1)
    return logp.gather(-1, seq[:, p.shape[1] :, None])[..., 0].sum(-1)


@torch.inference_mode()
def neutral_effects(
    model,
    tokens: Tensor,
    *,
    hooks: Sequence = (),
    batch_size: int = 8,
    on_tokens: Callable[[int], object] | None = None,
) -> tuple[float, float, float]:
    """(KL(clean || steered), CE clean, CE steered), mean per predicted non-BOS token.
    `on_tokens(n)` is called after each batch of n tokens (a progress bar's `update`)."""
    kl = ce_clean = ce_steer = 0.0
    n = 0
    for start in range(0, len(tokens), batch_size):
        batch = tokens[start : start + batch_size].to(next(model.parameters()).device)
        targets = batch[:, 2:, None]
        clean = torch.log_softmax(model(batch)[:, 1:-1].float(), -1)
        steered = torch.log_softmax(
            model.run_with_hooks(batch, fwd_hooks=list(hooks))[:, 1:-1].float(), -1
        )
        kl += float((clean.exp() * (clean - steered)).sum())
        ce_clean -= float(clean.gather(-1, targets).sum())
        ce_steer -= float(steered.gather(-1, targets).sum())
        n += targets.numel()
        if on_tokens is not None:
            on_tokens(batch.numel())
    return kl / n, ce_clean / n, ce_steer / n


@torch.inference_mode()
def latent_max_activation(
    model, dictionary, tokens: Tensor, latent: int, *, batch_size: int = 8, layer: int | None = None
) -> float:
    """The latent's largest activation over the non-BOS positions of `tokens` (for `scale`);
    `layer`: a CLT feature's source layer."""
    w = writer(dictionary, layer)
    _check_latent(w, latent)
    p_in = hook_point(model, w.hook_in)
    dtype = w.writes[0][1].dtype
    best = float("-inf")
    for start in range(0, len(tokens), batch_size):
        batch = tokens[start : start + batch_size].to(next(model.parameters()).device)
        x = capture(model, batch, [p_in])[p_in.short]
        f = w.encode(x[:, 1:].to(dtype))[..., latent]
        best = max(best, float(f.max()))
    return best


@dataclass
class SweepRow:
    mode: str
    value: float
    target_logprob: float | None
    target_logprob_change: float | None
    neutral_kl: float | None
    neutral_ce: float | None
    neutral_ce_change: float | None
    greedy: str
    sampled: str


@dataclass
class SweepResult:
    """Effects of steering one latent at several coefficients; JSON-serialisable via `to_dict`."""

    latent: int
    prompt: str
    target: str | None
    scale: float
    positions: list[int] | None
    seed: int
    temperature: float
    clean_target_logprob: float | None
    clean_neutral_ce: float | None
    clean_greedy: str
    clean_sampled: str
    rows: list[SweepRow] = field(default_factory=list)
    extra: dict = field(default_factory=dict)
    layer: int | None = None  # a CLT feature's source layer

    @property
    def feature(self) -> str:
        """`latent 12`, or `L3 latent 12` for a CLT feature."""
        return (
            f"latent {self.latent}" if self.layer is None else f"L{self.layer} latent {self.latent}"
        )

    def to_dict(self) -> dict:
        return asdict(self)


def sweep(
    model,
    dictionary,
    latent: int,
    prompt: str,
    *,
    coefficients: Sequence[float] = (0.0, 2.0, 4.0, 8.0),
    clamp_values: Sequence[float] = (),
    target: str | None = None,
    neutral_tokens: Tensor | None = None,
    scale: float = 1.0,
    positions: Sequence[int] | None = None,
    max_new_tokens: int = 24,
    temperature: float = 1.0,
    top_k: int | None = None,
    seed: int = 0,
    progress: bool = False,
    layer: int | None = None,
) -> SweepResult:
    """Add (and/or clamp) one latent at each value; generations, target log-prob, side effects.

    The clean model is row 0 of every batch, so clean and steered outputs come from one loop.
    `progress`: tqdm bars counting generated positions and neutral tokens, with their ETA.
    `layer`: a CLT feature's source layer (a model layer), None for other dictionaries.
    """
    _check_latent(writer(dictionary, layer), latent)
    pos = tuple(positions) if positions is not None else None
    steers = [Steer(latent, "add", float(c), scale, pos) for c in coefficients]
    steers += [Steer(latent, "clamp", float(v), scale, pos) for v in clamp_values]
    if not steers:
        raise ValueError("nothing to sweep: give --coefficients and/or --clamp values")
    p_tokens = _tokens(model, prompt, True)
    check_positions(pos, p_tokens.shape[1])
    rows: list[Steer | None] = [None, *steers]
    skip_bos = _starts_with_bos(model, p_tokens)
    hooks = steering_hooks(model, dictionary, rows, skip_first=skip_bos, layer=layer)
    n = len(rows)

    def texts(tokens: Tensor) -> list[str]:
        return [model.to_string(t[p_tokens.shape[1] :]) for t in tokens]

    gen_bar = _bar(progress, 2 * max_new_tokens, f"steer: generate {n} rows", "tok")
    tick = gen_bar.update if gen_bar is not None else None
    greedy = texts(
        generate(
            model, p_tokens, hooks=hooks, n_rows=n, max_new_tokens=max_new_tokens, on_token=tick
        )
    )
    sampled = texts(
        generate(
            model,
            p_tokens,
            hooks=hooks,
            n_rows=n,
            max_new_tokens=max_new_tokens,
            temperature=temperature,
            top_k=top_k,
            seed=seed,
            on_token=tick,
        )
    )
    if gen_bar is not None:
        gen_bar.close()
    logp = None
    if target:
        logp = target_logprob(model, prompt, target, hooks=hooks, n_rows=n).tolist()
    effects: list[tuple[float, float, float] | None] = [None] * n
    if neutral_tokens is not None:
        skip = _starts_with_bos(model, neutral_tokens)
        total = len(steers) * neutral_tokens.numel()
        side_bar = _bar(progress, total, "steer: side effects on neutral text", "tok")
        for r, s in enumerate(steers, start=1):
            row_hooks = steering_hooks(model, dictionary, [s], skip_first=skip, layer=layer)
            effects[r] = neutral_effects(
                model,
                neutral_tokens,
                hooks=row_hooks,
                on_tokens=side_bar.update if side_bar is not None else None,
            )
        if side_bar is not None:
            side_bar.close()
    clean_ce = effects[1][1] if effects[1] is not None else None

    result = SweepResult(
        layer=layer,
        latent=latent,
        prompt=prompt,
        target=target,
        scale=scale,
        positions=list(pos) if pos is not None else None,
        seed=seed,
        temperature=temperature,
        clean_target_logprob=logp[0] if logp else None,
        clean_neutral_ce=clean_ce,
        clean_greedy=greedy[0],
        clean_sampled=sampled[0],
    )
    for r, s in enumerate(steers, start=1):
        eff = effects[r]
        result.rows.append(
            SweepRow(
                mode=s.mode,
                value=s.value,
                target_logprob=logp[r] if logp else None,
                target_logprob_change=logp[r] - logp[0] if logp else None,
                neutral_kl=eff[0] if eff else None,
                neutral_ce=eff[2] if eff else None,
                neutral_ce_change=eff[2] - eff[1] if eff else None,
                greedy=greedy[r],
                sampled=sampled[r],
            )
        )
    return result


def _bar(progress: bool, total: int, desc: str, unit: str):
    if not progress:
        return None
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, unit=unit, unit_scale=total >= 10_000)


def format_sweep(result: SweepResult) -> str:
    """Effects table, then generations side by side (clean first)."""
    lines = [
        f"{result.feature}  scale {result.scale:.4g}  prompt {result.prompt!r}"
        + (f"  target {result.target!r}" if result.target else ""),
        f"{'mode':<6} {'value':>8} {'dlogp(target)':>14} {'KL neutral':>11} {'dCE neutral':>12}",
    ]

    def num(v: float | None, width: int) -> str:
        return f"{v:{width}.4f}" if v is not None else f"{'-':>{width}}"

    for row in result.rows:
        lines.append(
            f"{row.mode:<6} {row.value:8.3g} {num(row.target_logprob_change, 14)} "
            f"{num(row.neutral_kl, 11)} {num(row.neutral_ce_change, 12)}"
        )
    lines.append("")
    lines.append(f"{'clean':<14} greedy: {result.clean_greedy!r}")
    lines.append(f"{'':<14} sampled: {result.clean_sampled!r}")
    for row in result.rows:
        lines.append(f"{row.mode + ' ' + format(row.value, '.3g'):<14} greedy: {row.greedy!r}")
        lines.append(f"{'':<14} sampled: {row.sampled!r}")
    return "\n".join(lines)


def sweep_figure(result: SweepResult):
    """Plotly figure: target log-prob change and neutral KL vs coefficient, generations below."""
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    fig = make_subplots(
        rows=2,
        cols=1,
        row_heights=[0.45, 0.55],
        vertical_spacing=0.08,
        specs=[[{"secondary_y": True}], [{"type": "table"}]],
    )
    for mode, dash in (("add", "solid"), ("clamp", "dot")):
        rows = [r for r in result.rows if r.mode == mode]
        if not rows:
            continue
        xs = [r.value for r in rows]
        curves = [
            ("target_logprob_change", f"Δ log p({result.target!r})", "#1f77b4", False),
            ("neutral_kl", "KL on neutral text", "#d62728", True),
        ]
        for field_name, label, color, right_axis in curves:
            ys = [getattr(r, field_name) for r in rows]
            if ys[0] is None:  # no target given / no neutral text
                continue
            fig.add_trace(
                go.Scatter(
                    x=xs,
                    y=ys,
                    name=f"{mode}: {label}",
                    mode="lines+markers",
                    line={"dash": dash, "color": color},
                ),
                row=1,
                col=1,
                secondary_y=right_axis,
            )
    fig.update_xaxes(title_text="coefficient (x scale)", row=1, col=1)
    fig.update_yaxes(title_text="Δ log p(target) [nats]", row=1, col=1, secondary_y=False)
    fig.update_yaxes(title_text="KL(clean || steered) [nats/token]", row=1, col=1, secondary_y=True)
    labels = ["clean"] + [f"{r.mode} {r.value:.3g}" for r in result.rows]
    greedy = [result.clean_greedy] + [r.greedy for r in result.rows]
    sampled = [result.clean_sampled] + [r.sampled for r in result.rows]
    fig.add_trace(
        go.Table(
            columnwidth=[1, 5, 5],
            header={"values": ["steer", "greedy", f"sampled (T={result.temperature}, seed)"]},
            cells={
                "values": [
                    labels,
                    [html.escape(g) for g in greedy],
                    [html.escape(s) for s in sampled],
                ],
                "align": "left",
            },
        ),
        row=2,
        col=1,
    )
    fig.update_layout(
        title=f"Steering {result.feature}: {result.prompt!r}",
        height=900,
        template="plotly_white",
    )
    return fig
