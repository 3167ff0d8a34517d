"""FVU against L0 for every architecture, ours and the peers, and JumpReLU / ReLU at matched L0.

One hook of the embedded SmolLM2 is cached once (``quality_grid``'s workload: ~131k train and 32k
held-out tokens), and every run trains on the same batches at the same token budget:

- TopK, BatchTopK and Matryoshka BatchTopK (ours) and TopK (sparsify, its defaults as
  ``peers.py`` steps it) at several k;
- JumpReLU and ReLU+L1, ours and SAELens's trainers (their defaults but the sparsity
  coefficient): a recorded sweep of the coefficient, each round fitting log L0 against log
  coefficient through the runs so far and aiming at the L0 bands (30-40 and 60-80) not hit yet.
  Every sweep run is a point of the frontier; the run nearest each band's centre is the matched-L0
  row, with CE loss recovered (``interp_bench.analysis.splice``) on held-out sequences.

L0 and dense fraction are probed on 4k held-out tokens eight times over each run, so a run still
dense at the end of its budget shows. Runs of one round train in lock-step (rotating order).

    python -m benchmarks.frontier                 # L9.resid_post, 8x, 204,800 tokens (~1 h)
    python -m benchmarks.frontier --plot benchmarks/out/frontier.json   # figure only
    python -m benchmarks.frontier --small         # tiny random model, seconds (CI)

Writes benchmarks/out/frontier.json, and the figure as docs/img/frontier.json (plotly) and
docs/img/frontier.png.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import time
from pathlib import Path

import torch
from torch import Tensor

from benchmarks.common import ROOT, machine_info
from benchmarks.lockstep import PeerSAE, eval_dictionary, train_lockstep
from benchmarks.peers import SAELensPeer, SparsifyPeer
from benchmarks.quality_grid import Ours, Workload, load_eval, train_batches
from interp_bench.commands.counts import parse_count
from interp_bench.dictionaries.evaluate import OUTLIER_NORM, evaluate

OUT = ROOT / "benchmarks" / "out"
IMG = ROOT / "docs" / "img"
# family -> (label on the figure, trainer, arch); k families take --ks, the others a coefficient.
FAMILIES = {
    "topk/ours": ("TopK (ours)", "ours", "topk"),
    "batchtopk/ours": ("BatchTopK (ours)", "ours", "batchtopk"),
    "matryoshka/ours": ("Matryoshka BatchTopK (ours)", "ours", "batchtopk"),
    "topk/sparsify": ("TopK (sparsify)", "sparsify", "topk"),
    "jumprelu/ours": ("JumpReLU (ours)", "ours", "jumprelu"),
    "jumprelu/sae_lens": ("JumpReLU (SAELens)", "sae_lens", "jumprelu"),
    "relu/ours": ("ReLU+L1 (ours)", "ours", "relu"),
    "relu/sae_lens": ("ReLU+L1 (SAELens)", "sae_lens", "relu"),
}
K_FAMILIES = ("topk/ours", "batchtopk/ours", "matryoshka/ours", "topk/sparsify")
SWEPT = ("jumprelu/ours", "jumprelu/sae_lens", "relu/ours", "relu/sae_lens")
# First-round coefficients, from each trainer's default (ours: L0 100-135 at L15 in 48 steps,
# bench_train) towards sparser. Ours normalise inputs (one scale fits every hook); SAELens
# trains on raw activations (dense after 48 steps at its defaults), so its pair is wider apart.
# Ours' JumpReLU: L0 ~60 / ~24 at 0.3 / 1 in 200 steps of 1,024 on L9 once its thresholds got
# their own lr (RESULTS.md, "JumpReLU thresholds' learning rate"); 2 and 8 now land below 20.
START = {
    "jumprelu/ours": (0.3, 1.0),
    "relu/ours": (5.0, 20.0),
    "jumprelu/sae_lens": (1.0, 30.0),
    "relu/sae_lens": (3.0, 30.0),
}
PROBES = 8  # L0 / dense-fraction probes over each run


# ---- trainers --------------------------------------------------------------------------------


def make_trainer(run: dict, hook: str, d_in: int, d_sae: int, args):
    """One trainer of a run spec {"family", "k" or "coef"} (seeded and fed like the others)."""
    _, who, arch = FAMILIES[run["family"]]
    b, tokens, seed = args.batch_size, args.tokens, args.seed
    if who == "ours":
        over: dict = {"arch": arch}
        if "coef" in run:
            over["l0_coefficient" if arch == "jumprelu" else "l1_coefficient"] = run["coef"]
        if run["family"] == "matryoshka/ours":
            over["matryoshka"] = matryoshka_sizes(d_sae)
        return Ours(hook, d_in, d_sae, run.get("k", 32), b, tokens, seed, (arch, over, {}, 1.0))
    if who == "sparsify":
        return PeerSAE(SparsifyPeer(d_in, d_sae, k=run["k"], batch_size=b, seed=seed), hook)
    peer = SAELensPeer(
        arch, d_in, d_sae, k=32, batch_size=b, total_tokens=tokens, seed=seed,
        coefficient=run["coef"],
    )  # fmt: skip
    return PeerSAE(peer, hook)


def matryoshka_sizes(d_sae: int) -> tuple[int, ...]:
    """Prefixes of 1/18 and 2/9 of the width then all of it: 256,1024,4608 at 8x of 576."""
    return (max(1, d_sae // 18), max(2, 2 * d_sae // 9), d_sae)


def run_id(run: dict) -> str:
    value = f"k{run['k']}" if "k" in run else f"c{run['coef']:.4g}"
    return f"{run['family']}@{value}"


# ---- one round: runs in lock-step ------------------------------------------------------------


def train_round(runs: list[dict], train_dir: Path, x_eval: Tensor, hook: str, args) -> dict:
    """Train ``runs`` on the same batches, probing L0 / dense fraction as they go; returns
    {run id: (result, trainer)}."""
    d_in = x_eval.shape[1]
    d_sae = args.width * d_in
    trainers = {run_id(r): make_trainer(r, hook, d_in, d_sae, args) for r in runs}
    traj: dict[str, list] = {n: [] for n in trainers}
    steps = args.tokens // args.batch_size
    probe_at = {max(1, round(steps * (i + 1) / PROBES)) for i in range(PROBES)}
    probe = x_eval[: args.probe_tokens]

    def probe_all(done: int, seconds: dict[str, float]) -> None:
        if done not in probe_at:
            return
        for n, t in trainers.items():
            with eval_dictionary(t, hook) as d:
                (ev,) = evaluate([d], [{hook: probe}])
            traj[n].append([done * args.batch_size, ev.l0, ev.dense_frac])
        print(f"    step {done}/{steps} ({len(trainers)} runs)", flush=True)

    typical_norm = OUTLIER_NORM * x_eval.double().norm(dim=1).median().item()
    held_out = ({hook: x_eval[s : s + 4096]} for s in range(0, len(x_eval), 4096))
    batches = train_batches(train_dir, [hook], args.batch_size, args.seed)
    trained = train_lockstep(
        trainers, batches, steps, held_out, hook, typical_norm=typical_norm, after_step=probe_all
    )
    out = {}
    for run, (n, t) in zip(runs, trainers.items(), strict=True):
        stats = {**run, "id": n, **trained.stats[n].to_dict(), "trajectory": traj[n]}
        stats["tokens_per_s"] = steps * args.batch_size / max(trained.seconds[n], 1e-9)
        stats["load"] = trained.load
        stats["config"] = getattr(t, "config", {})
        out[n] = (stats, t)
    return out


# ---- the coefficient sweep -------------------------------------------------------------------


def band_centre(band: tuple[float, float]) -> float:
    return math.sqrt(band[0] * band[1])


def in_band(l0: float, band: tuple[float, float]) -> bool:
    return band[0] <= l0 <= band[1]


def propose(points: list[tuple[float, float]], target: float, max_factor: float = 30.0) -> float:
    """The next coefficient aiming at L0 ``target``, from (coefficient, L0) runs so far: log-log
    interpolation between the nearest runs either side, else extrapolation along the slope of
    the two nearest runs (a factor at most ``max_factor``, at least 2, beyond the last)."""
    pts = sorted((c, max(l0, 1e-3)) for c, l0 in points)
    dense = [p for p in pts if p[1] > target]  # too many latents: a larger coefficient
    sparse = [p for p in pts if p[1] <= target]
    if dense and sparse:
        (c0, l0), (c1, l1) = max(dense), min(sparse)
        if c0 >= c1 or l0 == l1:  # not monotone (noise): split the difference
            return math.sqrt(c0 * c1)
        t = (math.log(l0) - math.log(target)) / (math.log(l0) - math.log(l1))
        return math.exp(math.log(c0) + t * (math.log(c1) - math.log(c0)))
    near = pts[-2:] if dense else pts[:2]
    edge = pts[-1] if dense else pts[0]
    log_factor = math.log(max_factor)
    (c0, l0), (c1, l1) = near[0], near[-1]
    if c0 != c1 and l1 < l0:  # L0 ~ c^slope, slope < 0
        slope = (math.log(l1) - math.log(l0)) / (math.log(c1) - math.log(c0))
        log_factor = abs(math.log(edge[1] / target)) / -slope
    factor = math.exp(min(max(log_factor, math.log(2.0)), math.log(max_factor)))
    return edge[0] * factor if dense else edge[0] / factor


def next_round(results: list[dict], bands: list[tuple[float, float]]) -> list[dict]:
    """For each swept family, a run aimed at each band no run of it has hit yet."""
    runs = []
    for fam in SWEPT:
        done = [r for r in results if r["family"] == fam]
        if not done:
            continue
        points = [(r["coef"], r["l0"]) for r in done]
        coefs = [r["coef"] for r in done]
        for band in bands:
            if any(in_band(r["l0"], band) for r in done):
                continue
            c = propose(points, band_centre(band))
            if all(abs(math.log(c / o)) > 0.02 for o in coefs):
                coefs.append(c)
                runs.append({"family": fam, "coef": float(f"{c:.4g}")})
    return runs


def band_rows(results: list[dict], bands: list[tuple[float, float]]) -> list[dict]:
    """Per band and family: the run nearest the band's centre (in log L0), flagged in_band."""
    rows = []
    for band in bands:
        for fam in (*SWEPT, *K_FAMILIES):
            done = [r for r in results if r["family"] == fam]
            if not done:
                continue
            best = min(done, key=lambda r: abs(math.log(max(r["l0"], 1e-3) / band_centre(band))))
            if fam in K_FAMILIES and not in_band(best["l0"], band):
                continue  # k families are context only where a k lands in the band
            rows.append(
                {"band": list(band), "id": best["id"], "in_band": in_band(best["l0"], band)}
            )
    return rows


# ---- CE loss recovered -----------------------------------------------------------------------


def splice_rows(model, tokens: Tensor, keep: dict, rows: list[dict], hook: str, args) -> dict:
    """Spliced CE of each band row's dictionary on held-out sequences, in one pass."""
    from contextlib import ExitStack

    from interp_bench.analysis.splice import spliced_loss

    ids = list(dict.fromkeys(r["id"] for r in rows))
    with ExitStack() as stack:
        dicts = {i: stack.enter_context(eval_dictionary(keep[i], hook)) for i in ids}
        t0 = time.perf_counter()
        res = spliced_loss(model, dicts, tokens[: args.splice_seqs], error_added=False)
    print(f"  spliced {len(ids)} dictionaries in {time.perf_counter() - t0:.0f} s", flush=True)
    return {r.name: r.to_dict() for r in res}


# ---- the figure ------------------------------------------------------------------------------


def figure(result: dict):
    """FVU against L0, one line per family, the L0 bands shaded."""
    import plotly.graph_objects as go

    fig = go.Figure()
    for band in result["args"]["bands"]:
        fig.add_vrect(x0=band[0], x1=band[1], fillcolor="grey", opacity=0.12, line_width=0)
    for fam, (label, who, _) in FAMILIES.items():
        pts = sorted((r["l0"], r["fvu"]) for r in result["runs"] if r["family"] == fam)
        if not pts:
            continue
        fig.add_trace(
            go.Scatter(
                x=[p[0] for p in pts], y=[p[1] for p in pts], name=label, mode="lines+markers",
                line={"dash": "solid" if who == "ours" else "dot"},
            )
        )  # fmt: skip
    a = result["args"]
    fig.update_layout(
        title=(
            f"FVU vs L0: {a['hook']}, {a['width']}x, {a['tokens']:,} tokens, batch "
            f"{a['batch_size']} (same batches for every run)"
        ),
        xaxis={"title": "L0 (held-out, latents per token)", "type": "log"},
        yaxis={"title": "FVU (held-out)", "type": "log"},
        template="plotly_white", width=900, height=560,
    )  # fmt: skip
    return fig


def write_figure(result: dict, stem: Path, image: bool) -> None:
    fig = figure(result)
    stem.parent.mkdir(parents=True, exist_ok=True)
    stem.with_suffix(".json").write_text(fig.to_json() + "\n")
    if image:
        fig.write_image(str(stem.with_suffix(".png")), scale=1.5)
    print(f"wrote {stem.with_suffix('.json')}" + (" and .png" if image else ""))


# ---- tables ----------------------------------------------------------------------------------


def print_tables(result: dict) -> None:
    byid = {r["id"]: r for r in result["runs"]}
    head = f"{'run':32}{'L0':>8}{'FVU':>8}{'FVU typ':>8}{'dead%':>7}{'dense%':>7}{'tok/s':>8}"
    print("\nevery run (sweep rounds in order)\n" + head + "\n" + "-" * len(head))
    for r in result["runs"]:
        print(
            f"{r['id']:32}{r['l0']:>8.1f}{r['fvu']:>8.4f}{r['fvu_typical']:>8.4f}"
            f"{100 * r['dead_frac']:>7.2f}{100 * r['dense_frac']:>7.2f}{r['tokens_per_s']:>8,.0f}"
        )
    print("\nmatched L0 (run nearest each band's centre; * = outside the band)")
    head = f"{'band':10}{'run':32}{'L0':>8}{'FVU':>8}{'CE rec':>8}{'dead%':>7}{'dense%':>7}"
    print(head + "\n" + "-" * len(head))
    for row in result["bands"]:
        r = byid[row["id"]]
        ce = result["splice"].get(row["id"], {}).get("ce_recovered", float("nan"))
        mark = "" if row["in_band"] else "*"
        print(
            f"{'{:g}-{:g}'.format(*row['band']):10}{r['id'] + mark:32}{r['l0']:>8.1f}"
            f"{r['fvu']:>8.4f}{ce:>8.4f}{100 * r['dead_frac']:>7.2f}{100 * r['dense_frac']:>7.2f}"
        )
    print("\nband rows over training: L0 / dense% on the probe tokens at each eighth of the run")
    for r in (byid[i] for i in dict.fromkeys(row["id"] for row in result["bands"])):
        path = "  ".join(f"{l0:.0f}/{100 * dense:.0f}" for _, l0, dense in r["trajectory"])
        print(f"{r['id']:32}{path}")


# ---- driver ----------------------------------------------------------------------------------


def parse_bands(text: str) -> list[tuple[float, float]]:
    bands = []
    for part in text.split(","):
        lo, _, hi = part.partition("-")
        try:
            band = (float(lo), float(hi))
        except ValueError:
            band = (math.nan, math.nan)
        if not 0 < band[0] < band[1]:
            raise ValueError(f"--bands takes lo-hi[,lo-hi], e.g. 30-40,60-80; got {part!r}")
        bands.append(band)
    return bands


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--hook", default=None, help="default L9.resid_post (--small: L1.resid_post)")
    p.add_argument("--width", type=int, default=None, help="d_sae / d_in (default 8; --small 4)")
    p.add_argument("--tokens", type=parse_count, default=None, help="budget (default 204800)")
    p.add_argument("--batch-size", type=parse_count, default=None, help="default 1024")
    p.add_argument("--ks", default=None, help="k of the TopK families (default 16,32,64)")
    p.add_argument("--bands", default=None, help="L0 bands (default 30-40,60-80)")
    p.add_argument("--rounds", type=int, default=2, help="sweep rounds after the first")
    p.add_argument(
        "--max-minutes", type=float, default=None,
        help="start no sweep round that would end past this many minutes of training",
    )  # fmt: skip
    p.add_argument("--families", default=",".join(FAMILIES), help="comma list of families")
    p.add_argument("--splice-seqs", type=int, default=128, help="held-out sequences for CE")
    p.add_argument("--probe-tokens", type=int, default=4096)
    p.add_argument("--eval-tokens", type=parse_count, default=32768)
    p.add_argument("--cache-tokens", type=parse_count, default=None, help="train tokens cached")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--small", action="store_true", help="tiny random model, CI-sized (seconds)")
    p.add_argument("--acts-dir", default=str(OUT / "grid_acts"))
    p.add_argument(
        "--caches", default=None, help="TRAIN,EVAL: existing activation caches of --hook to use"
    )
    p.add_argument("--out", default=None)
    p.add_argument(
        "--figure",
        default=None,
        help="figure stem (default docs/img/frontier for every family, else beside --out)",
    )
    p.add_argument("--no-image", action="store_true", help="write the figure's JSON only")
    p.add_argument(
        "--plot", nargs="+", default=None, help="only redraw the figure from these result JSONs"
    )
    args = p.parse_args(argv)
    small = args.small
    for name, full, tiny in (
        ("hook", "L9.resid_post", "L1.resid_post"), ("width", 8, 4),
        ("tokens", 204_800, 2048), ("batch_size", 1024, 256), ("ks", "16,32,64", "4,8"),
        ("bands", "30-40,60-80", "4-8,10-20"), ("cache_tokens", 131_072, 8192),
    ):  # fmt: skip
        if getattr(args, name) is None:
            setattr(args, name, tiny if small else full)
    if small:
        args.eval_tokens = min(args.eval_tokens, 1024)
        args.probe_tokens = min(args.probe_tokens, 512)
        args.splice_seqs = min(args.splice_seqs, 8)
    try:
        args.ks = [int(k) for k in args.ks.split(",")]
        args.bands = parse_bands(args.bands)
    except ValueError as e:
        p.error(str(e))
    if args.caches is not None:
        args.caches = args.caches.split(",")
        if len(args.caches) != 2 or not all(Path(c, "manifest.json").exists() for c in args.caches):
            p.error(
                f"--caches takes TRAIN,EVAL cache folders (with manifest.json); got {args.caches}"
            )
    args.families = [f.strip() for f in args.families.split(",") if f.strip()]
    bad = [f for f in args.families if f not in FAMILIES]
    if bad:
        p.error(f"--families takes {','.join(FAMILIES)}; got {bad}")
    if args.tokens < args.batch_size:
        p.error(f"--tokens {args.tokens} is less than one batch of {args.batch_size}")
    args.out = Path(args.out or OUT / ("frontier_small.json" if small else "frontier.json"))
    # Only the full frontier replaces the README's figure; a subset of families (or --small)
    # draws next to its --out, so a partial run cannot overwrite the committed one.
    full = set(args.families) == set(FAMILIES)
    default_figure = (
        IMG / "frontier" if full and not small else args.out.with_name(args.out.stem + "_figure")
    )
    args.figure = Path(args.figure or default_figure)
    return args


def run(args: argparse.Namespace, model=None) -> dict:
    torch.set_num_threads(args.threads)
    result: dict = {"machine": machine_info(), "runs": [], "rounds": [], "splice": {}}
    result["args"] = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}
    work = Workload(args, model)
    if args.caches:  # existing caches of the hook, read only (no forward pass here)
        train_dir = Path(args.caches[0])
        x_eval = load_eval(Path(args.caches[1]), [args.hook], args.eval_tokens)[args.hook]
    else:
        train_dir, by_hook = work.hook(args.hook)
        x_eval = by_hook[args.hook]
    keep: dict = {}  # trainers of runs that may become band rows (spliced at the end)

    def do_round(runs: list[dict], label: str) -> None:
        if not runs:
            return
        t0 = time.perf_counter()
        done = train_round(runs, train_dir, x_eval, args.hook, args)
        for stats, trainer in done.values():
            result["runs"].append(stats)
            near = any(0.5 * b[0] <= stats["l0"] <= 2 * b[1] for b in args.bands)
            if near or len(done) <= 2 or args.small:
                keep[stats["id"]] = trainer
        result["rounds"].append(
            {"label": label, "runs": [run_id(r) for r in runs],
             "wall_s": time.perf_counter() - t0, "load": os.getloadavg()[0]}
        )  # fmt: skip
        for stats, _ in done.values():
            print(
                f"  {label}: {stats['id']:30} L0 {stats['l0']:8.1f}  FVU {stats['fvu']:.4f}  "
                f"dense {100 * stats['dense_frac']:.2f}%",
                flush=True,
            )
        print(f"  {label} took {time.perf_counter() - t0:.0f} s, load {os.getloadavg()[0]:.1f}")
        args.out.parent.mkdir(parents=True, exist_ok=True)  # written after every round
        args.out.write_text(json.dumps(result, indent=1, default=str) + "\n")

    t_start = time.perf_counter()
    ks = [f for f in K_FAMILIES if f in args.families]
    do_round([{"family": f, "k": k} for f in ks for k in args.ks], "k families")
    swept = [f for f in SWEPT if f in args.families]
    do_round([{"family": f, "coef": c} for f in swept for c in START[f]], "sweep 0")
    for i in range(args.rounds):
        runs = [r for r in next_round(result["runs"], args.bands) if r["family"] in swept]
        last = result["rounds"][-1] if result["rounds"] else None
        if runs and last and args.max_minutes:
            guess = last["wall_s"] / max(1, len(last["runs"])) * len(runs)
            if time.perf_counter() - t_start + guess > 60 * args.max_minutes:
                print(f"  sweep {i + 1} skipped: ~{guess:.0f} s would pass --max-minutes")
                result["skipped"] = [run_id(r) for r in runs]
                break
        do_round(runs, f"sweep {i + 1}")
    result["bands"] = band_rows(result["runs"], args.bands)
    rows = [r for r in result["bands"] if r["id"] in keep]
    if rows and args.splice_seqs > 0:
        result["splice"] = splice_rows(
            work.model, work.eval_tokens_ids, keep, rows, args.hook, args
        )
    result["machine"]["loadavg_end"] = os.getloadavg()
    args.out.write_text(json.dumps(result, indent=1, default=str) + "\n")
    write_figure(result, args.figure, image=not args.no_image)
    return result


def merge(results: list[dict]) -> dict:
    """Results of several invocations (e.g. the k families and the sweep run apart) as one: the
    first one's settings, every run, band rows recomputed over all runs."""
    first = results[0]
    keys = ("hook", "width", "tokens", "batch_size", "seed")
    for r in results[1:]:
        if any(r["args"][k] != first["args"][k] for k in keys):
            raise ValueError(f"--plot: results differ in {keys}; merge runs of one workload only")
    out = {**first, "runs": [run for r in results for run in r["runs"]]}
    out["splice"] = {k: v for r in results for k, v in r.get("splice", {}).items()}
    bands = [tuple(b) for b in first["args"]["bands"]]
    out["bands"] = band_rows(out["runs"], bands)
    return out


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.plot:
        result = merge([json.loads(Path(f).read_text()) for f in args.plot])
        write_figure(result, args.figure, image=not args.no_image)
        print_tables(result)
        return 0
    result = run(args)
    print_tables(result)
    print(f"\nwrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
