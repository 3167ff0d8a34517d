"""The attribution graph of one prompt: nodes, and edges that are direct linear effects.

Nodes, in this order (the index of a node is its place in it):
- features: every active transcoder latent at every (layer, position);
- errors: one per (layer, position), `error[L, p]` of the replacement model;
- embeddings: one per position (token + position embedding entering block 0);
- logits: the top next-token logits at the last position, up to `logit_prob` cumulative
  probability and at most `max_logits`.

A feature's *input* is its pre-activation; a logit's input is the logit minus the mean logit
(softmax ignores the mean). In the frozen replacement model every input is affine in the source
nodes, so `input[t] = sum_s A[t, s] + bias[t]` exactly, where `A[t, s]` (the edge) is the
source's activation times the derivative of the target's input with respect to it, holding
every other node fixed (no path through another feature), and `bias[t]` collects the biases
(b_enc, b_dec, attention biases, b_U).

A row of `A` (all edges into one target) is one backward pass; `batch_size` rows go together as
one vectorised backward (`is_grads_batched`) over one frozen forward. Rows are computed for the
logits and then for features; with `max_feature_nodes` below the number of active features,
features are chosen greedily by their influence on the logits through the rows computed so far
(as circuit-tracer does). Features without a row are still sources.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import torch
from torch import Tensor

from interp_bench.circuits.replacement import Replacement, unembedding

KINDS = ("feature", "error", "embedding", "logit")


@dataclass
class Graph:
    """Nodes (see module docstring), the adjacency rows computed, and each node's input/bias."""

    tokens: list[int]
    token_strs: list[str]
    n_layers: int
    features: dict[str, Tensor]  # layer, pos, index (long [nF]); act (float [nF])
    logit_tokens: list[int]
    logit_probs: Tensor  # [nL]
    row_nodes: Tensor  # long [n_rows]: node id of each adjacency row
    adjacency: Tensor  # float [n_rows, n_nodes]: adjacency[r, s] = edge s -> row_nodes[r]
    inputs: Tensor  # float [n_rows]: each row node's input (pre-activation / demeaned logit)
    biases: Tensor  # float [n_rows]: input - sum of incoming edges, from the biases
    extra: dict = field(default_factory=dict)

    @property
    def n_features(self) -> int:
        return int(self.features["layer"].numel())

    @property
    def seq_len(self) -> int:
        return len(self.tokens)

    @property
    def n_nodes(self) -> int:
        return self.n_features + (self.n_layers + 1) * self.seq_len + len(self.logit_tokens)

    def error_id(self, layer: int, pos: int) -> int:
        return self.n_features + layer * self.seq_len + pos

    def embedding_id(self, pos: int) -> int:
        return self.n_features + self.n_layers * self.seq_len + pos

    def logit_id(self, i: int) -> int:
        return self.n_features + (self.n_layers + 1) * self.seq_len + i

    def node(self, i: int) -> dict:
        """Kind, layer (embedding -1, logit n_layers), position, and feature id / token."""
        nf, s, n = self.n_features, self.seq_len, self.n_layers
        if i < nf:
            f = self.features
            return {"kind": "feature", "layer": int(f["layer"][i]), "pos": int(f["pos"][i]),
                    "feature": int(f["index"][i]), "act": float(f["act"][i])}  # fmt: skip
        if i < nf + n * s:
            layer, pos = divmod(i - nf, s)
            return {"kind": "error", "layer": layer, "pos": pos}
        if i < nf + (n + 1) * s:
            pos = i - nf - n * s
            return {"kind": "embedding", "layer": -1, "pos": pos, "token": self.tokens[pos]}
        j = i - nf - (n + 1) * s
        return {"kind": "logit", "layer": n, "pos": s - 1, "token": self.logit_tokens[j],
                "prob": float(self.logit_probs[j])}  # fmt: skip

    def kinds(self) -> Tensor:
        """long [n_nodes]: index into KINDS."""
        nf, s, n = self.n_features, self.seq_len, self.n_layers
        out = torch.empty(self.n_nodes, dtype=torch.long)
        out[:nf] = 0
        out[nf : nf + n * s] = 1
        out[nf + n * s : nf + (n + 1) * s] = 2
        out[nf + (n + 1) * s :] = 3
        return out

    def logit_weights(self) -> Tensor:
        """[n_nodes]: each logit node's probability, 0 elsewhere."""
        w = torch.zeros(self.n_nodes)
        w[self.logit_id(0) :] = self.logit_probs
        return w


def top_logits(logits: Tensor, prob: float = 0.95, max_logits: int = 10) -> tuple[Tensor, Tensor]:
    """(token ids, probabilities) of the most likely next tokens until `prob` cumulative
    probability is reached, at most `max_logits`."""
    p = torch.softmax(logits.float(), -1)
    vals, ids = p.sort(descending=True)
    n = int((vals.cumsum(0) < prob).sum()) + 1
    n = max(1, min(n, max_logits))
    return ids[:n], vals[:n]


class _Rows:
    """Batched backward passes over one frozen forward: all edges into a batch of targets.

    A target's input is linear in one tensor of the forward: a feature's pre-activation is
    `mlp_in[layer][pos] @ W_enc[:, index] + b_enc`, a demeaned logit is `final[-1] @ w_u + b_u`.
    So the backward starts from that tensor with the encoder (unembedding) column as its
    gradient at the target's position: no indexing op is differentiated, which under
    `is_grads_batched` falls back to a per-row loop (10x slower on batches of mixed layers)."""

    def __init__(self, rep: Replacement, logit_ids: Tensor) -> None:
        self.rep = rep
        n, seq = rep.n_layers, rep.seq_len
        self.resid0 = rep.resid0.detach().clone().requires_grad_(True)
        self.writes = [w.detach().clone().requires_grad_(True) for w in rep.writes()]
        with torch.enable_grad():
            _, mlp_in, final = rep.forward(self.resid0, self.writes)
        f = rep.features
        self.per_layer = {}  # layer -> positions in the feature list
        self.roots: list[Tensor] = []  # [seq, d] tensors the targets read, one per layer + final
        n_targets = len(f) + len(logit_ids)
        self.root_of = torch.empty(n_targets, dtype=torch.long)
        self.pos = torch.empty(n_targets, dtype=torch.long)
        columns, values = [], torch.empty(n_targets)
        for layer in rep.transcoders.layers:
            sel = f.of_layer(layer)
            if sel.numel() == 0:
                continue
            w_enc, b_enc = rep.transcoders.encoder(layer, f.index[sel])
            x = mlp_in[layer].detach()[f.pos[sel]].to(w_enc.dtype)
            values[sel] = ((x * w_enc.t()).sum(-1) + b_enc).float()
            self.root_of[sel] = len(self.roots)
            self.pos[sel] = f.pos[sel]
            columns.append((sel, w_enc.t()))
            self.roots.append(mlp_in[layer])
            self.per_layer[layer] = sel
        w_u, b_u = unembedding(rep.model)
        w_u = (w_u[:, logit_ids] - w_u.mean(1, keepdim=True)).detach()
        b_u = (b_u[logit_ids] - b_u.mean()).detach()
        logit_sel = torch.arange(len(f), n_targets)
        values[logit_sel] = (final.detach()[-1].to(w_u.dtype) @ w_u + b_u).float()
        self.root_of[logit_sel] = len(self.roots)
        self.pos[logit_sel] = seq - 1
        columns.append((logit_sel, w_u.t()))
        self.roots.append(final)
        d = max(c.shape[1] for _, c in columns)
        self.columns = torch.zeros(n_targets, d, dtype=final.dtype)
        for sel, c in columns:
            self.columns[sel, : c.shape[1]] = c.to(final.dtype)
        self.decoders = {l: self._padded(l) for l in self.per_layer}
        self.values = values
        self.n_nodes = len(f) + (n + 1) * seq + len(logit_ids)

    def _padded(self, source: int) -> tuple[tuple[Tensor, Tensor], dict[int, Tensor]]:
        """The decoder rows of `source`'s active features times their activations, padded to
        `[seq, slots, d]` per target layer, and each feature's (position, slot)."""
        rep, f = self.rep, self.rep.features
        sel = self.per_layer[source]
        pos = f.pos[sel]
        counts = torch.bincount(pos, minlength=rep.seq_len)
        starts = torch.cumsum(counts, 0) - counts
        slot = torch.arange(sel.numel()) - starts[pos]  # features are sorted by position
        width = int(counts.max())
        dec = {}
        for target in rep.transcoders.targets(source):
            w = rep.transcoders.decoder(source, target)
            if w is None:
                continue
            padded = torch.zeros(rep.seq_len, width, w.shape[1], dtype=w.dtype)
            padded[pos, slot] = w[f.index[sel]] * f.act[sel, None].to(w.dtype)
            dec[target] = padded
        return (pos, slot), dec

    def rows(self, targets: Tensor) -> Tensor:
        """`[len(targets), n_nodes]`: edges into each target (feature list index, or
        `len(features) + j` for logit j)."""
        rep, f = self.rep, self.rep.features
        n, seq, b = rep.n_layers, rep.seq_len, len(targets)
        roots = self.root_of[targets]
        used = sorted(set(roots.tolist()))
        grad_outputs = []
        for r in used:
            root = self.roots[r]
            g = torch.zeros(b, *root.shape, dtype=root.dtype)
            rows = (roots == r).nonzero().flatten()
            t = targets[rows]
            g[rows, self.pos[t]] = self.columns[t, : root.shape[-1]]
            grad_outputs.append(g)
        grads = torch.autograd.grad(  # B backward passes vectorised over one forward
            [self.roots[r] for r in used],
            [self.resid0, *self.writes],
            grad_outputs=grad_outputs,
            retain_graph=True,
            allow_unused=True,
            is_grads_batched=True,
        )
        g_emb, g_out = grads[0], grads[1:]
        out = torch.zeros(b, self.n_nodes)
        nf = len(f)
        if g_emb is not None:
            out[:, nf + n * seq : nf + (n + 1) * seq] = (g_emb * rep.resid0).sum(-1).float()
        for layer, g in enumerate(g_out):
            if g is None:
                continue
            start = nf + layer * seq
            out[:, start : start + seq] = (g * rep.error[layer]).sum(-1).float()
        for source, (slots, dec) in self.decoders.items():
            acc = None
            for target, w in dec.items():
                g = g_out[target]
                if g is None:
                    continue
                # [seq, slots, d] @ [seq, d, B]: every feature at a position in one product.
                part = torch.bmm(w, g.permute(1, 2, 0).to(w.dtype))
                acc = part if acc is None else acc + part
            if acc is not None:
                sel = self.per_layer[source]
                out[:, sel] = acc[slots[0], slots[1]].t().float()
        return out


@torch.no_grad()
def _biases(rep: Replacement, logit_ids: Tensor, per_layer: dict) -> Tensor:
    """Each target's input in the frozen model with every source node set to zero."""
    zero0 = torch.zeros_like(rep.resid0)
    _, mlp_in, final = rep.forward(zero0, [b.clone() for b in rep.bias])
    f = rep.features
    out = torch.zeros(len(f) + len(logit_ids))
    for layer, sel in per_layer.items():
        w_enc, b_enc = rep.transcoders.encoder(layer, f.index[sel])
        x = mlp_in[layer][f.pos[sel]].to(w_enc.dtype)
        out[sel] = ((x * w_enc.t()).sum(-1) + b_enc).float()
    w_u, b_u = unembedding(rep.model)
    w_u = w_u[:, logit_ids] - w_u.mean(1, keepdim=True)
    out[len(f) :] = (final[-1].to(w_u.dtype) @ w_u + b_u[logit_ids] - b_u.mean()).float()
    return out


def attribute(
    rep: Replacement,
    *,
    logit_prob: float = 0.95,
    max_logits: int = 10,
    max_feature_nodes: int | None = None,
    batch_size: int = 64,
    progress: bool = False,
) -> Graph:
    """The attribution graph of the replacement model's prompt (see module docstring)."""
    from interp_bench.circuits.prune import influence

    if batch_size < 1:
        raise ValueError(f"batch_size must be positive, got {batch_size}")
    t0 = time.perf_counter()
    logit_ids, logit_probs = top_logits(rep.logits[-1], logit_prob, max_logits)
    engine = _Rows(rep, logit_ids.cpu())
    t_forward = time.perf_counter() - t0
    t_rows = t_rank = 0.0
    f = rep.features
    nf, nl = len(f), len(logit_ids)
    cap = nf if max_feature_nodes is None else min(nf, max_feature_nodes)
    # Rows fill a buffer allocated once: logits first, then features as they are chosen.
    adjacency = torch.empty(nl + cap, engine.n_nodes)
    t1 = time.perf_counter()
    adjacency[:nl] = engine.rows(torch.arange(nf, nf + nl))
    t_rows += time.perf_counter() - t1
    targets = torch.empty(nl + cap, dtype=torch.long)
    targets[:nl] = torch.arange(nf, nf + nl)
    done = nl
    todo = torch.ones(nf, dtype=torch.bool)
    weights = _logit_weights(nf, rep, logit_probs)
    tie = 1e-12 * f.act.abs() / (f.act.abs().max() + 1e-30)  # equal influence: larger act first
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=cap, desc="attribution", unit="feature")
    while done < nl + cap:
        room = min(batch_size, nl + cap - done)
        t1 = time.perf_counter()
        if cap == nf:  # every feature gets a row: take them in order
            pick = todo.nonzero().flatten()[:room]
        else:  # greedy: the most influential features through the rows so far
            rows_idx = _node_ids(targets[:done], nf, rep)
            score = influence(adjacency[:done], rows_idx, weights)[:nf] + tie
            score[~todo] = -1.0
            pick = score.topk(room).indices
        todo[pick] = False
        t2 = time.perf_counter()
        adjacency[done : done + len(pick)] = engine.rows(pick)
        t_rank += t2 - t1
        t_rows += time.perf_counter() - t2
        targets[done : done + len(pick)] = pick
        done += len(pick)
        if bar is not None:
            bar.update(len(pick))
    if bar is not None:
        bar.close()
    bias = _biases(rep, logit_ids, engine.per_layer)
    seconds = time.perf_counter() - t0
    tok = rep.tokens[0].tolist()
    tokenizer = getattr(rep.model, "tokenizer", None)
    strs = [tokenizer.decode([t]) if tokenizer is not None else str(t) for t in tok]
    return Graph(
        tokens=tok,
        token_strs=strs,
        n_layers=rep.n_layers,
        features={
            "layer": f.layer.cpu(),
            "pos": f.pos.cpu(),
            "index": f.index.cpu(),
            "act": f.act.cpu(),
        },  # fmt: skip
        logit_tokens=logit_ids.tolist(),
        logit_probs=logit_probs.cpu().float(),
        row_nodes=_node_ids(targets, nf, rep),
        adjacency=adjacency,
        inputs=engine.values[targets],
        biases=bias[targets],
        extra={
            "seconds": seconds,
            "forward_s": t_forward,  # the frozen forward kept for every backward
            "backward_s": t_rows,  # the batched backward passes and edge products
            "ranking_s": t_rank,  # choosing features by influence (max_feature_nodes)
            "batch_size": batch_size,
            "max_feature_nodes": cap,
            "skip_positions": list(rep.skip_positions),
        },  # fmt: skip
    )


def _node_ids(targets: Tensor, nf: int, rep: Replacement) -> Tensor:
    """Feature-list / logit target indices -> node ids."""
    shift = (rep.n_layers + 1) * rep.seq_len
    return torch.where(targets >= nf, targets + shift, targets)


def _logit_weights(nf: int, rep: Replacement, probs: Tensor) -> Tensor:
    w = torch.zeros(nf + (rep.n_layers + 1) * rep.seq_len + len(probs))
    w[-len(probs) :] = probs.cpu().float()
    return w
