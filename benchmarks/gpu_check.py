"""Every CUDA path checked against the CPU path, and training timed against sparsify on the GPU.

    python -m benchmarks.gpu_check                        # cuda, embedded SmolLM2-135M (< 8 min)
    python -m benchmarks.gpu_check --device cpu --tiny    # tiny random model (the test suite)

Each check prints PASS or FAIL with the measured difference and its tolerance; the exit code is
1 when any check fails. The same weights, tokens and batches go to both devices.

1. cache: `cache_activations` (fp32 storage) on DEVICE and on CPU: per hook,
   max |dev - cpu| / rms(cpu) <= 1e-3 (TF32 is off).
2. train: a TopK and a JumpReLU SAE trained on the same batches on DEVICE (bf16 autocast off,
   then on) and on CPU (fp32): first-step loss within 1e-4 relative (fp32) or 2e-2 (bf16);
   held-out FVU after training within 0.02 absolute (fp32) or 0.05 (bf16) of the CPU run
   (runs drift apart step by step, so the end point is compared on its quality, not its bits).
3. splice: `spliced_loss` of the CPU-trained TopK SAE on DEVICE and on CPU: clean, spliced and
   zero-ablated cross-entropy within 2e-3 nats, CE recovered within 2e-3.
4. steer: `target_logprob` under an add-steer of one latent, DEVICE against CPU, and a greedy
   `generate` under the same steer: log-prob within 1e-3 * (1 + |cpu|).
5. speed: median ms per training step of our TopK trainer (bf16 autocast on CUDA) against
   sparsify's `SparseCoder` stepped as its trainer does (`benchmarks/peers.py`; on CUDA it uses
   its Triton kernels), same batches, same GPU.
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

from benchmarks.common import OUT as OUT_DIR

OUT = OUT_DIR / "gpu_check.json"
TOL = {
    "cache_rel": 1e-3,
    "loss_rel_fp32": 1e-4,
    "loss_rel_bf16": 2e-2,
    "fvu_abs_fp32": 0.02,
    "fvu_abs_bf16": 0.05,
    "ce_abs": 2e-3,
    "logprob_rel": 1e-3,
}


def tiny_model():
    """A random 2-layer GPT-2-class model with the real GPT-2 tokenizer (no weights to load)."""
    from activation_cache.tiny_model import tiny_random_model

    return tiny_random_model()


def sizes(args) -> dict:
    if args.tiny:
        return dict(hook="L1.resid_post", n_seq=16, ctx=32, d_sae=256, k=8, batch=128, steps=8,
                    speed_d_sae=512, speed_steps=5, splice_seq=2)  # fmt: skip
    return dict(hook="L15.resid_post", n_seq=512, ctx=128, d_sae=4608, k=32, batch=4096,
                steps=150, speed_d_sae=16384, speed_steps=50, splice_seq=32)  # fmt: skip


class Report:
    def __init__(self):
        self.rows: list[dict] = []

    def check(self, name: str, value: float, tol: float, note: str = "") -> None:
        ok = math.isfinite(value) and value <= tol
        self.rows.append({"check": name, "value": value, "tol": tol, "ok": ok, "note": note})
        print(f"{'PASS' if ok else 'FAIL'}  {name:<44} {value:10.3g}  (tol {tol:g}) {note}")

    @property
    def ok(self) -> bool:
        return all(r["ok"] for r in self.rows)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def check_cache(rep, cpu_model, dev_model, tokens, s, tmp: Path, device) -> Path:
    from activation_cache.cache import cache_activations
    from activation_cache.reader import ActivationReader

    dirs = {}
    for name, model in (("cpu", cpu_model), ("dev", dev_model)):
        dirs[name] = tmp / f"acts_{name}"
        cache_activations(model, tokens, [s["hook"]], dirs[name], dtype="float32",
                          batch_size=8, shard_tokens=8192, progress=False)  # fmt: skip
    data = {}
    for name, d in dirs.items():
        r = ActivationReader(d, [s["hook"]], 1 << 20, shuffle=False, skip_bos=False)
        data[name] = torch.cat([b[s["hook"]] for b in r])
    ref = data["cpu"]
    rel = (data["dev"] - ref).abs().max().item() / ref.pow(2).mean().sqrt().item()
    rep.check(f"cache {s['hook']} max|dev-cpu|/rms", rel, TOL["cache_rel"], f"({device})")
    return dirs["cpu"]


def _fvu(d, x: torch.Tensor) -> float:
    with torch.no_grad():
        err = (d(x) - x).double().pow(2).sum()
        var = (x.double() - x.double().mean(0)).pow(2).sum()
    return (err / var).item()


def _train(cfg, cache: Path, s, device, autocast: bool):
    from activation_cache.reader import ActivationReader, hook_stats
    from interp_bench.config import TrainConfig
    from interp_bench.training.trainer import Trainer

    tc = TrainConfig(batch_size=s["batch"], tokens=s["batch"] * s["steps"], seed=0,
                     checkpoint_every=0, device=str(device), autocast=autocast)  # fmt: skip
    trainer = Trainer([cfg], tc, stats={s["hook"]: hook_stats(cache, s["hook"])}, device=device)
    reader = ActivationReader(cache, [s["hook"]], s["batch"], seed=0, device=device,
                              drop_last=True)  # fmt: skip
    first, epoch = None, 0
    while trainer.step_idx < s["steps"]:
        for batch in reader.batches(epoch):
            m = trainer.step(batch)
            first = m[0]["loss"] if first is None else first
            if trainer.step_idx >= s["steps"]:
                break
        epoch += 1
    return trainer.folded()[0], first


def check_training(rep, cache: Path, s, device, held: torch.Tensor) -> dict:
    from interp_bench.config import DictionaryConfig

    d_in = held.shape[1]
    trained = {}
    for arch in ("topk", "jumprelu"):
        cfg = DictionaryConfig(d_in=d_in, d_sae=s["d_sae"], arch=arch, k=s["k"], hook_in=s["hook"])
        cpu_d, cpu_first = _train(cfg, cache, s, torch.device("cpu"), False)
        cpu_fvu = _fvu(cpu_d, held)
        trained[arch] = cpu_d
        for autocast in (False, True):
            bf16 = autocast and device.type == "cuda"
            dev_d, dev_first = _train(cfg, cache, s, device, autocast)
            kind = "bf16" if bf16 else "fp32"
            note = f"autocast {'on' if autocast else 'off'} ({device}{'' if bf16 else ', fp32'})"
            rel = abs(dev_first - cpu_first) / max(abs(cpu_first), 1e-12)
            rep.check(f"train {arch} first-step loss rel", rel, TOL[f"loss_rel_{kind}"], note)
            dev_fvu = _fvu(dev_d.to("cpu"), held)
            fvus = f"{note}: {dev_fvu:.4f} vs {cpu_fvu:.4f}"
            diff = abs(dev_fvu - cpu_fvu)
            rep.check(f"train {arch} held-out FVU |dev-cpu|", diff, TOL[f"fvu_abs_{kind}"], fvus)
    return trained


def check_splice(rep, cpu_model, dev_model, tokens, d, device) -> None:
    from interp_bench.analysis.splice import spliced_loss

    res = {}
    for name, model, dev in (("cpu", cpu_model, "cpu"), ("dev", dev_model, device)):
        dd = copy.deepcopy(d).to(dev)
        res[name] = spliced_loss(model, [dd], tokens, batch_size=8)[0]
    a, b = res["dev"], res["cpu"]
    for field in ("ce_clean", "ce_spliced", "ce_zero", "ce_recovered"):
        va, vb = getattr(a, field), getattr(b, field)
        rep.check(f"splice {field} |dev-cpu|", abs(va - vb), TOL["ce_abs"], f"{va:.4f} vs {vb:.4f}")


def check_steer(rep, cpu_model, dev_model, d, device) -> None:
    from interp_bench.analysis.steering import Steer, generate, steering_hooks, target_logprob

    latent = int(d.W_dec.norm(dim=1).argmax())
    steer = Steer(latent, mode="add", value=4.0)
    out = {}
    for name, model, dev in (("cpu", cpu_model, "cpu"), ("dev", dev_model, device)):
        dd = copy.deepcopy(d).to(dev)
        hooks = steering_hooks(model, dd, [steer])
        with torch.inference_mode():
            lp = target_logprob(model, "The king said", " that the", hooks=hooks).item()
        text = generate(model, "The king said", hooks=hooks, max_new_tokens=8).cpu()
        out[name] = (lp, text)
    (lp_d, text_d), (lp_c, text_c) = out["dev"], out["cpu"]
    same = torch.equal(text_d, text_c)
    rep.check("steer target log-prob |dev-cpu|/(1+|cpu|)", abs(lp_d - lp_c) / (1 + abs(lp_c)),
              TOL["logprob_rel"], f"{lp_d:.4f} vs {lp_c:.4f}")  # fmt: skip
    words = cpu_model.tokenizer.decode(text_c[0])
    print(f"      greedy steered generation {'matches' if same else 'DIFFERS'}: {words!r}")


def time_training(cache: Path, s, device) -> dict:
    """Median ms/step: our TopK trainer against sparsify's SparseCoder on the same batches."""
    from activation_cache.reader import ActivationReader, hook_stats
    from benchmarks.peers import SparsifyPeer
    from interp_bench.config import DictionaryConfig, TrainConfig
    from interp_bench.training.trainer import Trainer

    reader = ActivationReader(cache, [s["hook"]], s["batch"], seed=1, device=device,
                              drop_last=True)  # fmt: skip
    batches = [b[s["hook"]] for b in reader]
    d_in = batches[0].shape[1]
    cfg = DictionaryConfig(d_in=d_in, d_sae=s["speed_d_sae"], arch="topk", k=s["k"],
                           hook_in=s["hook"])  # fmt: skip
    steps = s["speed_steps"]
    tc = TrainConfig(batch_size=s["batch"], tokens=s["batch"] * (steps + 5), checkpoint_every=0,
                     device=str(device), autocast=device.type == "cuda")  # fmt: skip
    ours = Trainer([cfg], tc, stats={s["hook"]: hook_stats(cache, s["hook"])}, device=device)
    peer = SparsifyPeer(d_in, s["speed_d_sae"], k=s["k"], batch_size=s["batch"], device=device)
    times: dict[str, list[float]] = {"ours": [], "sparsify": []}
    for i in range(steps + 3):  # 3 warm-up steps each, then alternate step by step
        x = batches[i % len(batches)]
        for name in ("ours", "sparsify") if i % 2 == 0 else ("sparsify", "ours"):
            sync(device)
            t0 = time.perf_counter()
            ours.step({s["hook"]: x}) if name == "ours" else peer.step(x)
            sync(device)
            if i >= 3:
                times[name].append((time.perf_counter() - t0) * 1e3)
    med = {k: statistics.median(v) for k, v in times.items()}
    print(f"      speed: ours {med['ours']:.2f} ms/step, sparsify {med['sparsify']:.2f} ms/step "
          f"(d_sae {s['speed_d_sae']}, k {s['k']}, batch {s['batch']}, {device})")  # fmt: skip
    return {"ms_per_step": med, "ratio_ours_over_sparsify": med["ours"] / med["sparsify"]}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cuda")
    p.add_argument("--tiny", action="store_true", help="tiny random model and sizes (tests)")
    p.add_argument("--model", default="smollm2-135m")
    p.add_argument("--skip-speed", action="store_true")
    p.add_argument("--out", default=str(OUT))
    args = p.parse_args()
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("no CUDA device here; pass --device cpu to run the CPU-only smoke check")
    torch.backends.cuda.matmul.allow_tf32 = False  # compare fp32 with fp32
    torch.backends.cudnn.allow_tf32 = False
    t_start = time.perf_counter()
    s = sizes(args)
    if args.tiny:
        cpu_model = tiny_model()
        g = torch.Generator().manual_seed(0)
        tokens = torch.randint(0, cpu_model.cfg.d_vocab, (s["n_seq"], s["ctx"]), generator=g)
        tokens[:, 0] = cpu_model.tokenizer.bos_token_id
        source = "random tokens"
    else:
        from bench_cache import corpus_tokens

        from activation_cache.models import load_model

        cpu_model = load_model(args.model, device="cpu")
        tokens, source = corpus_tokens(cpu_model, s["n_seq"], s["ctx"])
    # The same weights on both devices (the embedded model loads the same cached file twice).
    if args.tiny:
        dev_model = copy.deepcopy(cpu_model).to(device)
    else:
        dev_model = load_model(args.model, device=str(device))
    gpu = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    print(f"gpu_check on {device} ({gpu}), {tokens.numel():,} tokens of {source}")
    rep = Report()
    result: dict = {"device": str(device), "sizes": s, "tolerances": TOL}
    with tempfile.TemporaryDirectory() as tmp:
        cache = check_cache(rep, cpu_model, dev_model, tokens, s, Path(tmp), device)
        from activation_cache.reader import ActivationReader

        held_tokens = tokens[-max(2, s["n_seq"] // 8) :]  # also trained on: a consistency check
        held_dir = Path(tmp) / "held"
        from activation_cache.cache import cache_activations

        cache_activations(cpu_model, held_tokens, [s["hook"]], held_dir, dtype="float32",
                          progress=False)  # fmt: skip
        held = torch.cat([b[s["hook"]] for b in ActivationReader(held_dir, [s["hook"]], 1 << 20,
                                                                   shuffle=False)])  # fmt: skip
        trained = check_training(rep, cache, s, device, held)
        check_splice(rep, cpu_model, dev_model, tokens[: s["splice_seq"]], trained["topk"], device)
        check_steer(rep, cpu_model, dev_model, trained["topk"], device)
        if not args.skip_speed:
            result["speed"] = time_training(cache, s, device)
    result |= {"checks": rep.rows, "ok": rep.ok, "seconds": time.perf_counter() - t_start}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=1))
    print(f"{'all checks passed' if rep.ok else 'SOME CHECKS FAILED'} in "
          f"{result['seconds']:.0f} s; wrote {args.out}")  # fmt: skip
    return 0 if rep.ok else 1


if __name__ == "__main__":
    sys.exit(main())
