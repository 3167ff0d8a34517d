"""Plotly figures over a feature index: density histogram, feature card, reconstruction error.

All read a `FeatureIndex` (see `top_examples.load_feature_index`) and recompute nothing, so they
are instant in a notebook.
"""

from __future__ import annotations

import html
import math

import plotly.graph_objects as go
from plotly.subplots import make_subplots

from interp_bench.analysis.top_examples import FeatureIndex


def density_histogram(index: FeatureIndex) -> go.Figure:
    """Histogram of log10 firing density over live latents; dead and dense counts in the title."""
    s = index.meta["density"]
    edges, counts = s["log10_density_edges"], s["log10_density_counts"]
    mids = [(a + b) / 2 for a, b in zip(edges[:-1], edges[1:], strict=True)]
    fig = go.Figure(go.Bar(x=mids, y=counts, width=edges[1] - edges[0], marker_color="#4c78a8"))
    fig.add_vline(x=math.log10(s["dense_threshold"]), line_dash="dash", line_color="#e45756")
    fig.update_layout(
        title=f"Feature density over {s['n_tokens']:,} tokens: {s['dead']} dead, "
        f"{s['dense']} dense (> {s['dense_threshold']:.0%}) of {s['d_sae']:,} latents",
        xaxis_title="log10 firing density",
        yaxis_title="latents",
        bargap=0.05,
        template="plotly_white",
    )
    return fig


def _context_text(tokens: list[str], center: int) -> list[str]:
    out = [html.escape(t.replace("\n", "⏎")) for t in tokens]
    out[center] = f"<b>{out[center]}</b>"
    return out


def feature_card(index: FeatureIndex, i: int, n_examples: int = 10) -> go.Figure:
    """One latent: activation histogram, promoted/suppressed tokens, and its top contexts.

    The contexts are a heatmap (rows = examples, columns = context positions) coloured by the
    latent's activation on each token, with the token text written in the cell.
    """
    card = index.feature(i)
    top = card["top"][:n_examples]
    fig = make_subplots(
        rows=2,
        cols=2,
        row_heights=[0.35, 0.65],
        specs=[[{}, {}], [{"colspan": 2}, None]],
        subplot_titles=(
            "activation histogram (log bins)",
            "direct logit effect",
            "top-activating contexts",
        ),  # fmt: skip
        vertical_spacing=0.16,
    )
    e, c = card["hist"]["edges"], card["hist"]["counts"]
    if c:
        mids = [(a * b) ** 0.5 for a, b in zip(e[:-1], e[1:], strict=True)]
        fig.add_bar(x=mids, y=c, row=1, col=1, marker_color="#f58518", showlegend=False)
        fig.update_xaxes(type="log", title_text="activation", row=1, col=1)
    prom, supp = card["promoted"][:8], card["suppressed"][:8]
    if prom:
        toks = [repr(t) for t, _ in supp[::-1]] + [repr(t) for t, _ in prom[::-1]]
        vals = [v for _, v in supp[::-1]] + [v for _, v in prom[::-1]]
        colors = ["#e45756"] * len(supp) + ["#54a24b"] * len(prom)
        fig.add_bar(x=vals, y=toks, orientation="h", marker_color=colors, row=1, col=2,
                    showlegend=False)  # fmt: skip
        fig.update_yaxes(dtick=1, tickfont_size=9, row=1, col=2)
    w = index.window
    z, text, hover = [], [], []
    for ex in top:
        left = w - ex["center"]
        pad = [None] * left
        acts = pad + ex["acts"]
        toks = [""] * left + _context_text(ex["tokens"], ex["center"])
        right = 2 * w + 1 - len(acts)
        z.append(acts + [None] * right)
        text.append(toks + [""] * right)
        hover.append([f"{t}: {a:.3g}" if a is not None else "" for t, a in zip(
            text[-1], z[-1], strict=True)])  # fmt: skip
    if z:
        fig.add_heatmap(z=z, text=text, texttemplate="%{text}", hovertext=hover,
                        hoverinfo="text", colorscale="Oranges", zmin=0, textfont_size=11,
                        zmax=max(card["max_act"], 1e-9), showscale=False, row=2, col=1,
                        y=[f"#{r + 1}  {ex['act']:.3g}" for r, ex in enumerate(top)],
                        xgap=1, ygap=1)  # fmt: skip
        fig.update_yaxes(autorange="reversed", type="category", row=2, col=1)
        fig.update_xaxes(showticklabels=False, row=2, col=1)
    fig.update_layout(
        title=f"Latent {i}: density {card['density']:.3g}, mean act {card['mean_act']:.3g}, "
        f"max {card['max_act']:.3g}",
        height=360 + 34 * max(len(z), 1),
        template="plotly_white",
    )
    return fig


def recon_error_figure(index: FeatureIndex) -> go.Figure:
    """Per-token reconstruction error: distribution, by position, by token frequency."""
    r = index.recon
    fig = make_subplots(rows=1, cols=3, subplot_titles=(
        "log10 relative error", "by position", "by token frequency (count in stream)"))  # fmt: skip
    e, c = r["log10_rel_err_edges"], r["log10_rel_err_counts"]
    mids = [(a + b) / 2 for a, b in zip(e[:-1], e[1:], strict=True)]
    fig.add_bar(x=mids, y=c, row=1, col=1, showlegend=False, marker_color="#4c78a8")
    p = r["by_position"]
    fig.add_scatter(x=p["pos"], y=p["mean_rel_err"], mode="lines", row=1, col=2,
                    showlegend=False)  # fmt: skip
    f = r["by_frequency"]
    labels = [f">={m}" for m in f["min_count"]]
    fig.add_bar(x=labels, y=f["mean_rel_err"], text=f["count"], row=1, col=3, showlegend=False,
                marker_color="#72b7b2")  # fmt: skip
    fig.update_layout(
        title=f"Reconstruction error over {r['n_tokens']:,} tokens: mean relative error "
        f"{r['mean_rel_err']:.3g}, NMSE {r['nmse']:.3g}",
        template="plotly_white",
        height=380,
    )
    return fig
