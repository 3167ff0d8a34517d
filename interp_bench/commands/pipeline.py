"""The main job: cache a middle layer, train an SAE and a transcoder, evaluate, browse.

Every stage writes into one run folder and skips work already done, so re-running after an
interruption only does what is missing:

    RUN/demo_cfg.json             the config of the last complete run
    RUN/acts/{train,eval}/        activation cache (resumable shards + manifest)
    RUN/dictionaries/NAME/        cfg.json + sae_weights.safetensors (SAELens layout), metrics
    RUN/splice.json               spliced-loss results (reused while the weights are unchanged)
    RUN/analysis/NAME/            feature index + report.html
    RUN/summary.json              the numbers of the summary table, with per-stage timings

Each stage is timed in wall and CPU seconds and, where it streams tokens, tokens per second, so a
budget can be checked from throughput even on a busy machine.
"""

from __future__ import annotations

import importlib.util
import json
import math
import os
import shlex
import sys
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from activation_cache.cache import cache_activations
from activation_cache.corpus import CorpusConfig, cache_metadata, load_corpus
from activation_cache.hooks import n_layers
from activation_cache.models import load_model
from activation_cache.reader import ActivationReader, hook_stats
from activation_cache.streams import cache_stream
from interp_bench.analysis.report import write_report
from interp_bench.analysis.splice import spliced_loss
from interp_bench.analysis.top_examples import analyze
from interp_bench.config import DictionaryConfig, TrainConfig
from interp_bench.dictionaries import evaluate, load_dictionary
from interp_bench.dictionaries.saelens_format import how_to_load
from interp_bench.training.trainer import Trainer, check_same_run


@dataclass
class DemoConfig:
    """Sizes of the main job; `quick()` shrinks them to a few-minute smoke run.

    The defaults fit 20 minutes on 2 CPU cores: caching (half the model's depth per token) and
    the spliced-loss pass (several full-depth forwards per token) dominate; training two
    dictionaries on 2 x 400k tokens takes a few minutes.
    """

    model: str = "smollm2-135m"
    corpus: str = "shakespeare"
    layer: int | None = None  # None -> the middle layer
    context_len: int = 128
    train_tokens: int = 400_000  # cached training activations
    eval_tokens: int = 32_768  # cached held-out activations (evaluation, feature index)
    epochs: int = 2  # passes over the cached training tokens
    splice_tokens: int = 4_096  # held-out tokens for the spliced-loss pass
    expansion: int = 8
    k: int = 32
    batch_size: int = 2048
    lr: float | None = None  # None -> the trainer's d_sae-scaled default
    cache_dtype: str = "float16"
    seed: int = 0
    device: str | None = None
    out: str = "runs/demo"
    progress: bool = True

    @classmethod
    def quick(cls, **overrides) -> DemoConfig:
        """Its own folder (runs/quick), so an interrupted `make demo` never blocks `make quick`."""
        base = dict(
            train_tokens=32_768,
            eval_tokens=8_192,
            epochs=2,
            splice_tokens=1_024,
            batch_size=1024,
            out="runs/quick",
        )
        base.update(overrides)
        return cls(**base)


@dataclass
class Stage:
    """Timing of one stage; `skipped` when its results were already in the run folder."""

    name: str
    seconds: float = 0.0
    cpu_seconds: float = 0.0
    tokens: int = 0
    skipped: bool = False
    extra: dict = field(default_factory=dict)

    @property
    def tokens_per_s(self) -> float | None:
        return self.tokens / self.seconds if self.tokens and self.seconds > 0 else None


class _Clock:
    """Collects `Stage`s; `with clock.stage("cache train", tokens=n) as s:` times one."""

    def __init__(self) -> None:
        self.stages: list[Stage] = []

    @contextmanager
    def stage(self, name: str, tokens: int = 0):
        s = Stage(name, tokens=tokens)
        w0, c0 = time.perf_counter(), time.process_time()
        try:
            yield s
        finally:
            s.seconds = round(time.perf_counter() - w0, 2)
            s.cpu_seconds = round(time.process_time() - c0, 2)
            self.stages.append(s)

    def to_list(self) -> list[dict]:
        return [asdict(s) | {"tokens_per_s": s.tokens_per_s} for s in self.stages]


def _n_seq(tokens: int, context_len: int, available: int, what: str) -> int:
    n = math.ceil(tokens / context_len)
    if n > available:
        raise ValueError(
            f"the corpus has only {available * context_len:,} {what} tokens but "
            f"{tokens:,} were asked for: lower --tokens or point --corpus at more text"
        )
    return n


def _say(msg: str) -> None:
    print(f"[interp-bench] {msg}", flush=True)


def _weights_key(dict_dir: Path, names: list[str]) -> list[list]:
    """What identifies the trained weights: size and mtime of every weights file."""
    out = []
    for n in names:
        st = (dict_dir / n / "sae_weights.safetensors").stat()
        out.append([n, st.st_size, st.st_mtime_ns])
    return out


def _trained(dict_dir: Path, names: list[str], cfgs: list, train_cfg: TrainConfig) -> bool:
    """True when every dictionary is saved with these settings; ValueError when the folder holds
    another run (we refuse rather than silently mixing the two)."""
    if not all((dict_dir / n / "sae_weights.safetensors").exists() for n in names):
        return False
    # The demo has no --no-resume: name its own fixes.
    fix = f"an earlier run or an older version's defaults: delete {dict_dir} to train again here"
    for n, c in zip(names, cfgs, strict=True):
        check_same_run(dict_dir / n, c, train_cfg, fix=f"{fix}, or pass --out to a new folder")
    return True


def demo_train_config(cfg: DemoConfig, n_train: int) -> TrainConfig:
    """Training settings of the main job for ``n_train`` cached sequences: ``cfg.epochs`` passes.
    The warm-up is pinned (not TrainConfig's general rule): the main job's recorded results
    (benchmarks/RESULTS.md) were made with it, and a TopK-only run has no sparsity coefficient
    to warm up. The dead-latent window is the trainer's rule."""
    train_tokens = cfg.epochs * n_train * (cfg.context_len - 1)  # BOS positions are skipped
    steps = max(1, train_tokens // cfg.batch_size)
    return TrainConfig(
        lr=cfg.lr,
        tokens=train_tokens,
        batch_size=cfg.batch_size,
        seed=cfg.seed,
        warmup_steps=min(100, steps // 10),
        sparsity_warmup_steps=0,  # TopK has no sparsity penalty to warm up
        checkpoint_every=max(1, steps // 4),
        log_every=max(1, steps // 100),
        device=cfg.device,
    )


def run_demo(cfg: DemoConfig) -> dict:
    """Run every stage; returns (and writes) the summary."""
    t0 = time.perf_counter()
    clock = _Clock()
    out = Path(cfg.out).expanduser().resolve()  # printed paths must work from anywhere
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(cfg.seed)

    with clock.stage("load model"):
        _say(f"loading model {cfg.model}")
        model = load_model(cfg.model, device=cfg.device)
    layer = cfg.layer if cfg.layer is not None else n_layers(model) // 2
    if not 0 <= layer < n_layers(model):
        raise ValueError(
            f"--layer {layer} out of range: this model has layers 0..{n_layers(model) - 1}"
        )
    resid, mlp_in, mlp_out = (f"L{layer}.{k}" for k in ("resid_post", "mlp_in", "mlp_out"))
    hooks = [resid, mlp_in, mlp_out]

    with clock.stage("tokenize corpus"):
        _say(f"tokenizing corpus {cfg.corpus}")
        corpus_cfg = CorpusConfig(source=cfg.corpus, context_len=cfg.context_len, seed=cfg.seed)
        splits = load_corpus(corpus_cfg, model.tokenizer)
    n_train = _n_seq(cfg.train_tokens, cfg.context_len, splits.train.shape[0], "training")
    n_eval = _n_seq(cfg.eval_tokens, cfg.context_len, splits.eval.shape[0], "held-out")
    n_splice = _n_seq(cfg.splice_tokens, cfg.context_len, splits.eval.shape[0], "held-out")

    acts = {}
    for split, tokens in (("train", splits.train[:n_train]), ("eval", splits.eval[:n_eval])):
        acts[split] = out / "acts" / split
        with clock.stage(f"cache {split}", tokens=tokens.numel()) as st:
            _say(f"caching {hooks} on {tokens.numel():,} {split} tokens -> {acts[split]}")
            manifest_path = acts[split] / "manifest.json"
            st.skipped = manifest_path.exists() and json.loads(manifest_path.read_text()).get(
                "complete", False
            )
            st.tokens = 0 if st.skipped else st.tokens
            cache_activations(
                model,
                tokens,
                hooks,
                acts[split],
                dtype=cfg.cache_dtype,
                meta=cache_metadata(splits, corpus_cfg, split, model.tokenizer),
                progress=cfg.progress,
            )

    d_model = int(model.cfg.d_model)
    common = dict(
        d_in=d_model, d_sae=cfg.expansion * d_model, arch="topk", k=cfg.k, model_name=cfg.model
    )
    dict_cfgs = [
        DictionaryConfig(hook_in=resid, **common),
        DictionaryConfig(hook_in=mlp_in, hook_out=mlp_out, d_out=d_model, **common),
    ]
    train_cfg = demo_train_config(cfg, n_train)
    train_tokens, steps = train_cfg.tokens, train_cfg.schedule().total_steps
    dict_dir = out / "dictionaries"
    with clock.stage("train", tokens=train_tokens) as st:
        stats = {h: hook_stats(acts["train"], h) for h in hooks}
        trainer = Trainer(dict_cfgs, train_cfg, stats=stats, device=cfg.device, out_dir=dict_dir)
        names = trainer.names
        if _trained(dict_dir, names, dict_cfgs, train_cfg):
            _say("dictionaries already trained; loading them")
            st.skipped = True
            dicts = [load_dictionary(dict_dir / n, device=trainer.device) for n in names]
        else:
            _say(
                f"training {len(dict_cfgs)} dictionaries on {train_tokens:,} tokens "
                f"({steps} steps of {cfg.batch_size})"
            )
            reader = ActivationReader(acts["train"], hooks, cfg.batch_size, seed=cfg.seed)
            dicts = trainer.fit(reader)
    if st.skipped:
        st.tokens = 0

    eval_rows = n_eval * (cfg.context_len - 1)
    with clock.stage("evaluate", tokens=eval_rows):
        _say("evaluating on held-out activations")
        eval_reader = ActivationReader(acts["eval"], hooks, cfg.batch_size, shuffle=False)
        metrics = [m.to_dict() for m in evaluate(dicts, eval_reader, max_tokens=eval_rows)]

    splice_path = out / "splice.json"
    key = {"weights": _weights_key(dict_dir, names), "n_seq": n_splice}
    cached = json.loads(splice_path.read_text()) if splice_path.exists() else {}
    with clock.stage("spliced loss", tokens=n_splice * cfg.context_len) as st:
        if cached.get("key") == key:
            _say("spliced loss already measured")
            st.skipped, st.tokens = True, 0
            splice = cached["results"]
        else:
            _say(f"spliced loss on {n_splice * cfg.context_len:,} held-out tokens")
            results = spliced_loss(
                model,
                dict(zip(names, dicts, strict=True)),
                splits.eval[:n_splice],
                progress=cfg.progress,
            )
            splice = [r.to_dict() for r in results]
            splice_path.write_text(json.dumps({"key": key, "results": splice}, indent=2) + "\n")

    reports = {}
    for name, d in zip(names, dicts, strict=True):
        index_dir = out / "analysis" / name
        report = index_dir / "report.html"
        weights = dict_dir / name / "sae_weights.safetensors"
        with clock.stage(f"analyze {name}", tokens=n_eval * cfg.context_len) as st:
            if report.exists() and report.stat().st_mtime_ns >= weights.stat().st_mtime_ns:
                st.skipped, st.tokens = True, 0
            else:
                _say(f"feature index + report for {name}")
                hooks_needed = [d.cfg.hook_in] + ([d.cfg.hook_out] if d.cfg.hook_out else [])
                analyze(
                    d,
                    cache_stream(acts["eval"], hooks_needed),
                    index_dir,
                    model=model,
                    max_tokens=n_eval * cfg.context_len,
                    progress=cfg.progress,
                )
                write_report(index_dir)
        reports[name] = report

    rows = []
    for name, d, m, s in zip(names, dicts, metrics, splice, strict=True):
        rows.append(
            {
                "name": name,
                "kind": "transcoder" if s["hook_out"] else "sae",
                "fvu": m["fvu"],
                "l0": m["l0"],
                "dead_frac": m["dead_frac"],
                "ce_clean": s["ce_clean"],
                "ce_spliced": s["ce_spliced"],
                "ce_zero": s["ce_zero"],
                "ce_mean": s["ce_mean"],
                "ce_recovered": s["ce_recovered"],
                "ce_recovered_vs_mean": s["ce_recovered_vs_mean"],
                "kl_spliced": s["kl_spliced"],
                "loads_with": how_to_load(d.cfg),
                # relative to the summary's folder: valid wherever the folder is moved or read
                # from; `read_summary` resolves them
                "dictionary": _rel(dict_dir / name, out),
                "metrics": _rel(dict_dir / name / "metrics.jsonl", out),
                "index": _rel(out / "analysis" / name, out),
                "report": _rel(reports[name], out),
            }
        )
    summary = {
        "paths_relative_to": "this file's folder",
        "model": cfg.model,
        "layer": layer,
        "hooks": hooks,
        "train_tokens_cached": n_train * cfg.context_len,
        "eval_tokens_cached": n_eval * cfg.context_len,
        "splice_tokens": n_splice * cfg.context_len,
        "trained_tokens": train_tokens,
        "seconds": round(time.perf_counter() - t0, 1),
        "torch_threads": torch.get_num_threads(),
        "stages": clock.to_list(),
        "dictionaries": rows,
    }
    # Written last, together: a run folder with these two files is complete and consistent.
    (out / "demo_cfg.json").write_text(json.dumps(asdict(cfg), indent=2) + "\n")
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    print(format_summary(resolve_paths(summary, out), out))
    return resolve_paths(summary, out)


PATH_KEYS = ("dictionary", "metrics", "index", "report")


def _rel(path: Path, run: Path) -> str:
    return str(Path(path).relative_to(run))


def resolve_paths(summary: dict, run: Path) -> dict:
    """The summary with every artifact path absolute (relative ones are taken from `run`)."""
    run = Path(run).resolve()
    rows = [
        {k: str(run / v) if k in PATH_KEYS else v for k, v in r.items()}
        for r in summary["dictionaries"]
    ]
    return {**summary, "dictionaries": rows}


def read_summary(run: str | Path) -> dict:
    """A run folder's summary.json with absolute artifact paths, whatever the reader's cwd."""
    run = Path(run).expanduser().resolve()
    path = run / "summary.json"
    if not path.exists():
        raise FileNotFoundError(
            f"{path} not found: run `interp-bench demo --out {run}` first (it resumes)"
        )
    return resolve_paths(json.loads(path.read_text()), run)


def repo_root() -> Path:
    """The checkout this package runs from (holds notebooks/ and runs/)."""
    return Path(__file__).resolve().parents[2]


def find_run(env: str = "INTERP_BENCH_RUN") -> Path:
    """The run folder a notebook reads: `$INTERP_BENCH_RUN` (absolute, or relative to the current
    folder or to the checkout), else the checkout's runs/demo, else its runs/quick."""
    given = os.environ.get(env)
    if given:
        p = Path(given).expanduser()
        candidates = [p] if p.is_absolute() else [Path.cwd() / p, repo_root() / p]
        for c in candidates:
            if (c / "summary.json").exists():
                return c.resolve()
        return candidates[-1].resolve()
    for name in ("demo", "quick"):
        if (repo_root() / "runs" / name / "summary.json").exists():
            return repo_root() / "runs" / name
    return repo_root() / "runs" / "quick"


def notebook_hint(run: Path) -> list[str]:
    """Commands that open the notebooks on `run` when pasted, with what is installed here."""
    nb_dir = repo_root() / "notebooks"
    if not nb_dir.is_dir():
        return [f"notebooks are in the source checkout's notebooks/ (read {run / 'summary.json'})"]
    jupyter = Path(sys.executable).parent / "jupyter"
    env = f"INTERP_BENCH_RUN={shlex.quote(str(run))}"
    if importlib.util.find_spec("jupyterlab") is not None:
        return [f"cd {shlex.quote(str(nb_dir))} && {env} {shlex.quote(str(jupyter))} lab"]
    if importlib.util.find_spec("notebook") is not None:
        return [f"cd {shlex.quote(str(nb_dir))} && {env} {shlex.quote(str(jupyter))} notebook"]
    pip = shlex.quote(str(Path(sys.executable).parent / "pip"))
    lines = [f"Jupyter is not installed here; for the interactive notebooks: {pip} install "
             f"jupyterlab, then cd {shlex.quote(str(nb_dir))} && {env} "
             f"{shlex.quote(str(jupyter))} lab"]  # fmt: skip
    if importlib.util.find_spec("nbclient") is not None:
        out = shlex.quote(str(run / "notebooks" / "{notebook_name}"))
        lines.append(
            f"or run them all now, outputs saved under {run / 'notebooks'}: mkdir -p "
            f"{shlex.quote(str(run / 'notebooks'))} && {env} {shlex.quote(str(jupyter))} "
            f"execute --output={out} {shlex.quote(str(nb_dir))}/*.ipynb"
        )
    return lines


def format_summary(summary: dict, out: Path) -> str:
    """The table printed at the end: results, per-stage timings, where each artifact lies."""
    head = f"{'dictionary':<46} {'FVU':>7} {'L0':>6} {'dead%':>6} {'CE rec.':>8} {'KL':>7}"
    lines = [
        "",
        f"interp-bench demo: {summary['model']} layer {summary['layer']}, "
        f"{summary['trained_tokens']:,} training tokens, {summary['seconds']:.0f} s",
        head,
        "-" * len(head),
    ]
    for r in summary["dictionaries"]:
        lines.append(
            f"{r['name']:<46} {r['fvu']:7.3f} {r['l0']:6.1f} {100 * r['dead_frac']:6.2f} "
            f"{r['ce_recovered']:8.3f} {r['kl_spliced']:7.4f}"
        )
    ce = summary["dictionaries"][0]["ce_clean"]
    lines.append(f"(CE clean {ce:.3f} nats; CE rec. = 1 - spliced gap / zero-ablation gap)")
    stage_head = f"{'stage':<46} {'wall s':>8} {'cpu s':>8} {'tok/s':>9}"
    lines += ["", stage_head, "-" * len(stage_head)]
    for s in summary["stages"]:
        tps = f"{s['tokens_per_s']:9.0f}" if s["tokens_per_s"] else f"{'':>9}"
        note = "  (done before, skipped)" if s["skipped"] else ""
        lines.append(f"{s['name']:<46} {s['seconds']:8.1f} {s['cpu_seconds']:8.1f} {tps}{note}")
    lines += [
        "",
        "Artifacts:",
        f"  activations   {out / 'acts'}   (interp-bench inspect {out / 'acts' / 'train'})",
    ]
    for r in summary["dictionaries"]:
        lines.append(f"  {r['kind']:<13} {r['dictionary']}")
        lines.append(f"  {'':<13} loads with {r['loads_with']}")
        lines.append(f"  {'metrics':<13} {r['metrics']}   (notebooks/01_cache_and_train.ipynb)")
        lines.append(f"  {'report':<13} {r['report']}   (open in a browser, works offline)")
    lines.append(f"  {'summary':<13} {out / 'summary.json'}")
    lines.append(f"  {'notebooks':<13} (browse, steer, transcoders)")
    lines += [f"    {line}" for line in notebook_hint(out)]
    return "\n".join(lines)
