"""The main job: cache a middle layer, train an SAE and a transcoder, evaluate, browse.

Every stage writes into one run folder and skips work already done, so re-running after an
interruption (or with a larger `--tokens`) only does what is missing:

    RUN/demo_cfg.json             this config
    RUN/acts/{train,eval}/        activation cache (resumable shards + manifest)
    RUN/dictionaries/NAME/        cfg.json + sae_weights.safetensors (SAELens layout), metrics
    RUN/analysis/NAME/            feature index + report.html
    RUN/summary.json              the numbers of the summary table
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from activation_cache.cache import cache_activations
from activation_cache.corpus import CorpusConfig, load_corpus
from activation_cache.hooks import n_layers
from activation_cache.models import load_model, model_id
from activation_cache.reader import ActivationReader, hook_stats

from .config import DictionaryConfig, TrainConfig
from .density import cache_stream
from .dictionary import load_dictionary
from .report import write_report
from .splice import spliced_loss
from .top_examples import analyze
from .trainer import Trainer, evaluate


@dataclass
class DemoConfig:
    """Sizes of the main job; `quick()` shrinks them to a few-minute smoke run."""

    model: str = "smollm2-135m"
    corpus: str = "shakespeare"
    layer: int | None = None  # None -> the middle layer
    context_len: int = 128
    train_tokens: int = 400_000  # cached training activations
    eval_tokens: int = 32_768  # cached held-out activations (evaluation, feature index)
    epochs: int = 2  # passes over the cached training tokens
    splice_tokens: int = 8_192  # held-out tokens for the spliced-loss pass
    expansion: int = 8
    k: int = 32
    batch_size: int = 4096
    cache_dtype: str = "float16"
    seed: int = 0
    device: str | None = None
    out: str = "runs/demo"

    @classmethod
    def quick(cls, **overrides) -> DemoConfig:
        base = dict(train_tokens=49_152, eval_tokens=8_192, epochs=2, splice_tokens=2_048)
        base.update(overrides)
        return cls(**base)


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


def run_demo(cfg: DemoConfig) -> dict:
    """Run every stage; returns (and writes) the summary."""
    t0 = time.time()
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "demo_cfg.json").write_text(json.dumps(asdict(cfg), indent=2) + "\n")
    torch.manual_seed(cfg.seed)

    _say(f"loading model {cfg.model}")
    model = load_model(cfg.model, device=cfg.device)
    layer = cfg.layer if cfg.layer is not None else n_layers(model) // 2
    resid, mlp_in, mlp_out = (f"L{layer}.{k}" for k in ("resid_post", "mlp_in", "mlp_out"))
    hooks = [resid, mlp_in, mlp_out]

    _say(f"tokenizing corpus {cfg.corpus}")
    splits = load_corpus(
        CorpusConfig(source=cfg.corpus, context_len=cfg.context_len, seed=cfg.seed),
        model.tokenizer,
    )
    n_train = _n_seq(cfg.train_tokens, cfg.context_len, splits.train.shape[0], "training")
    n_eval = _n_seq(cfg.eval_tokens, cfg.context_len, splits.eval.shape[0], "held-out")
    n_splice = _n_seq(cfg.splice_tokens, cfg.context_len, splits.eval.shape[0], "held-out")

    meta = {
        "model": model_id(model),
        "tokenizer": getattr(model.tokenizer, "name_or_path", ""),
        "corpus_fingerprint": splits.fingerprint,
    }
    acts = {}
    for split, tokens in (("train", splits.train[:n_train]), ("eval", splits.eval[:n_eval])):
        acts[split] = out / "acts" / split
        _say(f"caching {hooks} on {tokens.numel():,} {split} tokens -> {acts[split]}")
        cache_activations(
            model, tokens, hooks, acts[split], dtype=cfg.cache_dtype, meta={**meta, "split": split}
        )

    d_model = int(model.cfg.d_model)
    common = dict(
        d_in=d_model, d_sae=cfg.expansion * d_model, arch="topk", k=cfg.k, model_name=cfg.model
    )
    dict_cfgs = [
        DictionaryConfig(hook_in=resid, **common),
        DictionaryConfig(hook_in=mlp_in, hook_out=mlp_out, d_out=d_model, **common),
    ]
    train_tokens = cfg.epochs * n_train * (cfg.context_len - 1)  # BOS positions are skipped
    steps = max(1, train_tokens // cfg.batch_size)
    train_cfg = TrainConfig(
        tokens=train_tokens,
        batch_size=cfg.batch_size,
        seed=cfg.seed,
        warmup_steps=min(100, steps // 10),
        checkpoint_every=max(1, steps // 4),
        log_every=max(1, steps // 50),
        dead_tokens=min(10_000_000, max(cfg.batch_size, train_tokens // 4)),
        device=cfg.device,
    )
    stats = {h: hook_stats(acts["train"], h) for h in hooks}
    reader = ActivationReader(acts["train"], hooks, cfg.batch_size, seed=cfg.seed)
    dict_dir = out / "dictionaries"
    trainer = Trainer(dict_cfgs, train_cfg, stats=stats, device=cfg.device, out_dir=dict_dir)
    names = trainer.names
    done = all((dict_dir / n / "sae_weights.safetensors").exists() for n in names)
    if done:
        _say("dictionaries already trained; loading them")
        dicts = [load_dictionary(dict_dir / n, device=cfg.device) for n in names]
    else:
        _say(f"training {len(dict_cfgs)} dictionaries on {train_tokens:,} tokens ({steps} steps)")
        dicts = trainer.fit(reader)

    _say("evaluating on held-out activations")
    eval_reader = ActivationReader(acts["eval"], hooks, cfg.batch_size, shuffle=False)
    metrics = evaluate(dicts, eval_reader, max_tokens=cfg.eval_tokens)
    _say(f"spliced loss on {n_splice * cfg.context_len:,} held-out tokens")
    splice = spliced_loss(model, dict(zip(names, dicts, strict=True)), splits.eval[:n_splice])

    reports = {}
    for name, d in zip(names, dicts, strict=True):
        index_dir = out / "analysis" / name
        if not (index_dir / "report.html").exists():
            _say(f"feature index + report for {name}")
            hooks_needed = [d.cfg.hook_in] + ([d.cfg.hook_out] if d.cfg.hook_out else [])
            analyze(d, cache_stream(acts["eval"], hooks_needed), index_dir, model=model)
            write_report(index_dir)
        reports[name] = index_dir / "report.html"

    rows = []
    for name, m, s in zip(names, metrics, splice, strict=True):
        rows.append(
            {
                "name": name,
                "fvu": m["fvu"],
                "l0": m["l0"],
                "dead_frac": m["dead_frac"],
                "ce_clean": s.ce_clean,
                "ce_spliced": s.ce_spliced,
                "ce_recovered": s.ce_recovered,
                "kl_spliced": s.kl_spliced,
                "dictionary": str(dict_dir / name),
                "report": str(reports[name]),
            }
        )
    summary = {
        "model": cfg.model,
        "layer": layer,
        "train_tokens_cached": n_train * cfg.context_len,
        "eval_tokens_cached": n_eval * cfg.context_len,
        "trained_tokens": train_tokens,
        "seconds": round(time.time() - t0, 1),
        "dictionaries": rows,
    }
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    print(format_summary(summary, out))
    return summary


def format_summary(summary: dict, out: Path) -> str:
    head = f"{'dictionary':<44} {'FVU':>7} {'L0':>6} {'dead%':>6} {'CE rec.':>8} {'KL':>7}"
    lines = [
        "",
        f"interp-bench demo: {summary['model']} layer {summary['layer']}, "
        f"{summary['trained_tokens']:,} training tokens, {summary['seconds']:.0f} s",
        head,
        "-" * len(head),
    ]
    for r in summary["dictionaries"]:
        lines.append(
            f"{r['name']:<44} {r['fvu']:7.3f} {r['l0']:6.1f} {100 * r['dead_frac']:6.2f} "
            f"{r['ce_recovered']:8.3f} {r['kl_spliced']:7.4f}"
        )
    lines += [
        "",
        "Artifacts:",
        f"  activations   {out / 'acts'}   (interp-bench inspect {out / 'acts' / 'train'})",
    ]
    for r in summary["dictionaries"]:
        lines.append(f"  dictionary    {r['dictionary']}   (SAELens: SAE.load_from_disk(path))")
        lines.append(f"  report        {r['report']}   (open in a browser, works offline)")
    lines.append(f"  summary       {out / 'summary.json'}")
    return "\n".join(lines)
