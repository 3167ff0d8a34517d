"""Trainer: learning on planted data, resume equivalence, NaN guard, multi-dictionary steps."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from interp_bench.config import DictionaryConfig, TrainConfig
from interp_bench.training import checkpoint as ckpt
from interp_bench.training.trainer import Trainer, TrainingDiverged, lr_factor, run_names, train

HOOK = "L0.resid_post"
HOOK_OUT = "L0.mlp_out"
D = 16


def planted(n_batches: int, batch: int = 128, *, seed: int = 0, d: int = D, n_feat: int = 48):
    """Batches of x = sparse codes @ unit directions (3 active of n_feat) + offset, raw scale ~7,
    and a transcoder target y that reads the same codes through other directions."""
    g = torch.Generator().manual_seed(1234)  # the planted features are the same for every seed
    dirs = torch.nn.functional.normalize(torch.randn(n_feat, d, generator=g), dim=1)
    dirs_out = torch.nn.functional.normalize(torch.randn(n_feat, d, generator=g), dim=1)
    offset = torch.randn(d, generator=g)
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n_batches):
        idx = torch.rand(batch, n_feat, generator=g).argsort(1)[:, :3]
        vals = torch.rand(batch, 3, generator=g) + 0.5
        codes = torch.zeros(batch, n_feat).scatter_(1, idx, vals)
        x = 7.0 * (codes @ dirs) + offset + 0.01 * torch.randn(batch, d, generator=g)
        out.append({HOOK: x, HOOK_OUT: 3.0 * (codes @ dirs_out)})
    return out


def tcfg(**kw) -> TrainConfig:
    base = dict(
        lr=3e-3,
        batch_size=128,
        tokens=128 * 40,
        warmup_steps=5,
        decay_start=0.8,
        checkpoint_every=0,
        log_every=5,
        dead_tokens=128 * 10,
        sparsity_warmup_steps=5,
        device="cpu",
    )
    base.update(kw)
    return TrainConfig(**base)


def topk_cfg(k: int = 4, **kw) -> DictionaryConfig:
    # Dense decode: at these tiny widths the sparse kernels only add CPU overhead.
    kw.setdefault("decode", "dense")
    return DictionaryConfig(d_in=D, d_sae=64, arch="topk", k=k, hook_in=HOOK, **kw)


def relu_cfg(l1: float = 0.3, **kw) -> DictionaryConfig:
    return DictionaryConfig(d_in=D, d_sae=64, arch="relu", l1_coefficient=l1, hook_in=HOOK, **kw)


def fvu_raw(d, batches, hook_in=HOOK, hook_out=None) -> float:
    x = torch.cat([b[hook_in] for b in batches])
    y = torch.cat([b[hook_out] for b in batches]) if hook_out else x
    with torch.no_grad():
        err = (d(x) - y).pow(2).sum()
    return (err / (y - y.mean(0)).pow(2).sum()).item()


def read_metrics(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def weights(dicts) -> list[dict[str, torch.Tensor]]:
    return [{k: v.detach().clone() for k, v in d.state_dict().items()} for d in dicts]


def assert_same(a, b, atol=1e-6):
    for wa, wb in zip(a, b, strict=True):
        assert wa.keys() == wb.keys()
        for k in wa:
            torch.testing.assert_close(wa[k], wb[k], atol=atol, rtol=1e-5, msg=k)


@pytest.mark.parametrize(
    "cfg",
    [
        topk_cfg(),
        relu_cfg(),
        DictionaryConfig(d_in=D, d_sae=64, arch="batchtopk", k=4, hook_in=HOOK),
        DictionaryConfig(d_in=D, d_sae=64, arch="jumprelu", hook_in=HOOK, l0_coefficient=0.05),
        DictionaryConfig(
            d_in=D, d_sae=64, d_out=D, arch="topk", k=4, hook_in=HOOK, hook_out=HOOK_OUT
        ),
    ],
    ids=["topk", "relu", "batchtopk", "jumprelu", "transcoder"],
)
def test_fvu_drops_on_planted_data(cfg, tmp_path):
    data = planted(60)
    held_out = planted(4, seed=1)
    # lr 1e-2 over 60 small batches is only stable with clipping (off by default).
    tc = tcfg(lr=1e-2, grad_clip=1.0, tokens=128 * 60, log_every=1)
    t = Trainer([cfg], tc, out_dir=tmp_path)
    (d,) = t.fit(data)
    rows = read_metrics(tmp_path / t.names[0] / "metrics.jsonl")
    assert [r["step"] for r in rows] == list(range(1, 61))
    assert rows[-1]["tokens"] == 60 * 128
    first, last = rows[0]["fvu"], rows[-1]["fvu"]
    # Against the first step or the mean predictor (FVU 1), whichever is worse: a transcoder's
    # fitted decoder rows start it near 1, random rows near 2.
    assert last < 0.6 * max(first, 1.0) and last < 0.7, (first, last)
    for key in ("mse", "fvu", "l0", "dead_frac", "dense_frac", "aux", "sparsity", "lr"):
        assert math.isfinite(rows[-1][key]), key
    assert rows[-1]["tokens_per_s"] > 0
    # The saved dictionary acts on raw activations and generalises to held-out rows.
    fvu = fvu_raw(d, held_out, HOOK, cfg.hook_out)
    assert fvu < 0.6 * max(first, 1.0) and abs(fvu - last) < 0.15, (fvu, last)
    for f in ("cfg.json", "sae_weights.safetensors", "train_cfg.json", "dict_cfg.json"):
        assert (tmp_path / t.names[0] / f).exists(), f


def test_saved_dictionary_acts_on_raw_activations(tmp_path):
    """Folding the input scale into the weights gives the same reconstruction on raw inputs."""
    from interp_bench.dictionaries import load_dictionary

    data = planted(10)
    t = Trainer([topk_cfg()], tcfg(tokens=128 * 10), out_dir=tmp_path)
    (d,) = t.fit(data)
    scale = t.scales[HOOK]
    assert scale != pytest.approx(1.0, abs=0.05)
    x = data[0][HOOK]
    with torch.no_grad():
        expected = t.dicts[0](x * scale) / scale
        torch.testing.assert_close(d(x), expected, atol=1e-4, rtol=1e-4)
        loaded = load_dictionary(tmp_path / t.names[0])
        torch.testing.assert_close(loaded(x), expected, atol=1e-4, rtol=1e-4)


class Crash(RuntimeError):
    pass


class CrashAfter:
    """Yields the source's batches, then raises after `n` of them (a killed run)."""

    def __init__(self, source, n: int):
        self.source, self.n, self.seen = source, n, 0
        if hasattr(source, "batches"):
            self.batches = lambda epoch, start: self._count(source.batches(epoch, start))

    def _count(self, it):
        for b in it:
            self.seen += 1
            if self.seen > self.n:
                raise Crash
            yield b

    def __iter__(self):
        return self._count(iter(self.source))


@pytest.mark.parametrize("kind", ["list", "reader"])
def test_resume_equivalence(kind, tmp_path):
    """Train straight vs. train, crash mid-run, resume: same steps, same weights, one log."""
    if kind == "list":
        data = planted(12)  # 30 steps over 12 batches: resumes inside the third epoch
    else:
        from activation_cache.reader import ActivationReader

        write_tiny_cache(tmp_path / "acts", planted(8))  # 960 rows without BOS: 7 batches
        data = ActivationReader(tmp_path / "acts", [HOOK], 128, seed=3, drop_last=True)
    cfgs = [topk_cfg(), relu_cfg()]
    tc = tcfg(tokens=128 * 30, checkpoint_every=7)
    straight = Trainer(cfgs, tc, out_dir=tmp_path / "a").fit(data)

    with pytest.raises(Crash):
        Trainer(cfgs, tc, out_dir=tmp_path / "b").fit(CrashAfter(data, 25))
    names = run_names(cfgs)
    assert ckpt.steps(tmp_path / "b" / names[0] / "checkpoint") == [21]
    resumed_t = Trainer(cfgs, tc, out_dir=tmp_path / "b")
    resumed = resumed_t.fit(data)
    assert resumed_t.step_idx == 30
    assert_same(weights(straight), weights(resumed))
    for n in names:
        a = read_metrics(tmp_path / "a" / n / "metrics.jsonl")
        b = read_metrics(tmp_path / "b" / n / "metrics.jsonl")
        assert [r["step"] for r in a] == [r["step"] for r in b]
        for ra, rb in zip(a, b, strict=True):
            assert ra["fvu"] == pytest.approx(rb["fvu"], rel=1e-4, abs=1e-6)
            assert ra["dead_frac"] == rb["dead_frac"] and ra["dense_frac"] == rb["dense_frac"]


def test_resume_refuses_different_settings(tmp_path):
    data = planted(4)
    Trainer([topk_cfg()], tcfg(tokens=128 * 4, checkpoint_every=2), out_dir=tmp_path).fit(data)
    with pytest.raises(ValueError, match="different lr"):
        Trainer([topk_cfg()], tcfg(tokens=128 * 4, lr=1e-2), out_dir=tmp_path).fit(data)
    # --no-resume starts over and succeeds.
    Trainer([topk_cfg()], tcfg(tokens=128 * 4, lr=1e-2), out_dir=tmp_path).fit(data, resume=False)


def test_nan_in_data_stops_and_keeps_last_checkpoint(tmp_path):
    data = planted(10)
    data[6][HOOK][3, 2] = float("nan")  # step 7 sees it
    t = Trainer([topk_cfg()], tcfg(tokens=128 * 10, checkpoint_every=3), out_dir=tmp_path)
    bad_input = r"step 7.*NaN.*rows 3;.*checkpoint \(step 6\).*at fault"
    with pytest.raises(TrainingDiverged, match=bad_input):
        t.fit(data)
    run = tmp_path / t.names[0]
    assert ckpt.steps(run / "checkpoint") == [6]
    state = ckpt.read(run / "checkpoint", 6)
    assert all(torch.isfinite(v).all() for v in state["model"].values())
    assert not (run / "sae_weights.safetensors").exists()
    # The good checkpoint equals a clean run stopped at step 6.
    clean = Trainer([topk_cfg()], tcfg(tokens=128 * 10), out_dir=None)
    for b in data[:6]:
        clean.step(b)
    assert_same([state["model"]], weights(clean.dicts))


def test_huge_lr_diverges_with_clear_error(tmp_path):
    t = Trainer([relu_cfg()], tcfg(lr=1e30, warmup_steps=0, checkpoint_every=1), out_dir=tmp_path)
    with pytest.raises(TrainingDiverged, match="lower the learning rate") as err:
        t.fit(planted(40))
    assert "\n" not in str(err.value)
    run = tmp_path / t.names[0]
    last = ckpt.steps(run / "checkpoint")
    assert len(last) == 1
    state = ckpt.read(run / "checkpoint", last[0])
    assert all(torch.isfinite(v).all() for v in state["model"].values())


def test_multi_dictionary_step_equals_training_alone():
    data = planted(15)
    transcoder = DictionaryConfig(
        d_in=D, d_sae=32, d_out=D, k=4, hook_in=HOOK, hook_out=HOOK_OUT, skip=True, decode="dense"
    )
    cfgs = [topk_cfg(k=4), topk_cfg(k=8), relu_cfg(l1=0.3), relu_cfg(l1=1.0), transcoder]
    tc = tcfg(tokens=128 * 15)
    together = Trainer(cfgs, tc)
    for b in data:
        together.step(b)
    for i, c in enumerate(cfgs):
        alone = Trainer([c], tc)
        for b in data:
            alone.step(b)
        assert_same(weights([together.dicts[i]]), weights(alone.dicts), atol=1e-6)
        torch.testing.assert_close(together.since_fired[i], alone.since_fired[0])
    assert len({n for n in run_names(cfgs)}) == len(cfgs)


def test_dead_latents_are_counted_and_passed_to_loss():
    """A latent that never fires becomes dead after dead_tokens; AuxK then gets a mask."""
    data = planted(12)
    t = Trainer([topk_cfg()], tcfg(tokens=128 * 12, dead_tokens=128 * 3))
    with torch.no_grad():
        t.dicts[0].W_enc[:, :8] = 0.0  # latents 0..7 never reach the top k
        t.dicts[0].b_enc[:8] = -100.0
    seen = []
    orig = t.dicts[0].loss

    def spy(x, target=None, *, dead_mask=None, warmup=1.0):
        seen.append(dead_mask.clone())
        return orig(x, target, dead_mask=dead_mask, warmup=warmup)

    t.dicts[0].loss = spy
    for b in data[:5]:
        m = t.step(b)
    assert not seen[0].any()
    assert seen[4][:8].all()
    assert m[0]["dead_frac"] >= 8 / 64
    assert m[0]["aux"] > 0


def test_lr_schedule_shape():
    lin = [lr_factor(s, 100, 10, 0.8, "linear") for s in range(100)]
    cos = [lr_factor(s, 100, 10, 0.8, "cosine") for s in range(100)]
    assert lin[0] == pytest.approx(0.1) and lin[9] == 1.0 and lin[79] == 1.0
    assert lin[80] == 1.0 and lin[90] == pytest.approx(0.5) and lin[99] == pytest.approx(0.05)
    assert cos[90] == pytest.approx(0.5) and cos[85] > lin[85]
    assert all(a >= b for a, b in zip(lin[9:], lin[10:], strict=False))


def test_default_lr_scales_with_width():
    tc = tcfg(lr=None)
    t = Trainer([topk_cfg(), DictionaryConfig(d_in=D, d_sae=256, k=4, hook_in=HOOK)], tc)
    assert t.lrs[0] == pytest.approx(tc.auto_lr(64))  # 40 steps: the short-run boost applies
    # 16x at 40 steps: the rate of an 8x dictionary (the width rule waits for longer runs).
    assert t.lrs[1] == pytest.approx(t.lrs[0] / 2**0.5)
    long = tcfg(lr=None, tokens=400 * tc.batch_size)
    t = Trainer([topk_cfg(), DictionaryConfig(d_in=D, d_sae=256, k=4, hook_in=HOOK)], long)
    assert t.lrs[1] == pytest.approx(t.lrs[0] / 2)


def test_checkpoint_write_is_atomic(tmp_path, monkeypatch):
    """A crash while writing leaves the previous checkpoint intact and no partial step."""
    ckpt.write(tmp_path, 5, {"x": torch.ones(3)})
    real_save = torch.save

    def dying_save(obj, f, *a, **kw):
        f.write(b"partial")
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", dying_save)
    with pytest.raises(OSError):
        ckpt.write(tmp_path, 10, {"x": torch.zeros(3)})
    monkeypatch.setattr(torch, "save", real_save)
    assert ckpt.steps(tmp_path) == [5]
    assert ckpt.latest_common_step([tmp_path]) == 5
    torch.testing.assert_close(ckpt.read(tmp_path, 5)["x"], torch.ones(3))
    ckpt.prune(tmp_path, 5)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["step_000000005"]
    # Rewriting a step moves the old copy aside first; a crash right then still finds it.
    ckpt.write(tmp_path, 5, {"x": torch.full((3,), 2.0)})
    torch.testing.assert_close(ckpt.read(tmp_path, 5)["x"], torch.full((3,), 2.0))
    (tmp_path / "step_000000005").rename(tmp_path / f"step_000000005{ckpt.ASIDE}")
    assert ckpt.steps(tmp_path) == [5]
    torch.testing.assert_close(ckpt.read(tmp_path, 5)["x"], torch.full((3,), 2.0))
    ckpt.prune(tmp_path, 5)
    assert ckpt.steps(tmp_path) == [5]


def test_resume_uses_step_every_dictionary_has(tmp_path):
    """Killed between two dictionaries' checkpoint writes: resume from the older common step."""
    a, b = tmp_path / "a", tmp_path / "b"
    for d in (a, b):
        ckpt.write(d, 4, {"s": 4})
    ckpt.write(a, 8, {"s": 8})
    assert ckpt.latest_common_step([a, b]) == 4


def test_missing_hook_and_empty_source_errors():
    t = Trainer([topk_cfg()], tcfg())
    with pytest.raises(ValueError, match="no hook 'L0.resid_post'.*L9.resid_post"):
        t.step({"L9.resid_post": torch.randn(4, D)})
    with pytest.raises(ValueError, match="yielded no batches"):
        Trainer([topk_cfg()], tcfg()).fit([])
    one_shot = Trainer([topk_cfg()], tcfg(tokens=128 * 6))
    with pytest.warns(UserWarning, match="ran dry after 384 of 768 tokens"):
        one_shot.fit(iter(planted(3)))
    assert one_shot.step_idx == 3


def test_train_convenience_returns_saved(tmp_path):
    dicts = train([topk_cfg()], tcfg(tokens=128 * 3), planted(3), tmp_path)
    assert len(dicts) == 1
    assert (tmp_path / run_names([topk_cfg()])[0] / "metrics.jsonl").exists()


def write_tiny_cache(path: Path, batches, context_len: int = 16) -> None:
    """A cache dir in the shard layout of ARCHITECTURE.md, from planted batches."""
    from activation_cache.shards import Manifest, ShardInfo, shard_name, write_manifest, write_shard

    path.mkdir(parents=True)
    x = torch.cat([b[HOOK] for b in batches])
    y = torch.cat([b[HOOK_OUT] for b in batches])
    n_seq = x.shape[0] // context_len
    n = n_seq * context_len
    half = n_seq // 2
    shards = []
    for i, (s0, s1) in enumerate([(0, half), (half, n_seq)]):
        rows = slice(s0 * context_len, s1 * context_len)
        seq = torch.arange(s0, s1).repeat_interleave(context_len)
        tensors = {
            HOOK: x[:n][rows].contiguous(),
            HOOK_OUT: y[:n][rows].contiguous(),
            "tokens": torch.randint(0, 100, (len(seq),), dtype=torch.int32),
            "seq": seq,
            "pos": torch.arange(context_len, dtype=torch.int32).repeat(s1 - s0),
        }
        sha, size = write_shard(path / shard_name(i), tensors)
        shards.append(ShardInfo(shard_name(i), len(seq), s0, s1, sha, size))
    hooks = [
        {
            "short": h,
            "tl_name": f"blocks.0.hook_{h.split('.')[1]}",
            "layer": 0,
            "kind": h.split(".")[1],
            "d": D,
        }
        for h in (HOOK, HOOK_OUT)
    ]
    write_manifest(
        path,
        Manifest(
            model="tiny-test",
            hooks=hooks,
            dtype="float32",
            context_len=context_len,
            n_sequences=n_seq,
            seqs_per_shard=half,
            shards=shards,
            complete=True,
        ),
    )


def cli_train(argv: list[str]) -> int:
    """`interp-bench train ARGV` through the subcommand module (what cli.py dispatches to)."""
    import argparse

    from interp_bench.commands import train as cmd

    parser = argparse.ArgumentParser()
    cmd.add_arguments(parser)
    return cmd.run(parser.parse_args(argv))


def test_cli_train_sweep_resume_transcoder_and_errors(tmp_path, capsys):
    cache = tmp_path / "acts"
    write_tiny_cache(cache, planted(16))
    write_tiny_cache(tmp_path / "eval", planted(2, seed=1))
    out = tmp_path / "out"
    common = ["--activations", str(cache), "--out", str(out), "--device", "cpu"]
    sweep = ["--hook", HOOK, "--arch", "topk", "--k", "2,4", "--expansion", "4", "--tokens", "3k"]
    sweep += ["--batch-size", "128", "--lr", "1e-2", "--checkpoint-every", "5"]
    assert cli_train([*common, *sweep, "--eval-activations", str(tmp_path / "eval")]) == 0
    text = capsys.readouterr().out
    names = sorted(p.name for p in out.iterdir())
    assert names == ["L0.resid_post-topk-64-k2", "L0.resid_post-topk-64-k4"]
    for n in names:
        cfg = json.loads((out / n / "cfg.json").read_text())
        assert cfg["d_sae"] == 64
        rows = read_metrics(out / n / "metrics.jsonl")
        assert rows[-1]["step"] == math.ceil(3000 / 128)  # the step crossing the budget is last
        ev = json.loads((out / n / "eval.json").read_text())
        assert ev["fvu"] < 0.7 and 0 < ev["l0"] <= int(n[-1]) and n in text
    # The same command again finds the finished checkpoint and takes no more steps.
    before = (out / names[0] / "sae_weights.safetensors").read_bytes()
    assert cli_train([*common, *sweep]) == 0
    assert len(read_metrics(out / names[0] / "metrics.jsonl")) == len(rows)
    assert (out / names[0] / "sae_weights.safetensors").read_bytes() == before

    # Transcoder form with a skip connection.
    tc_args = ["--hook-in", HOOK, "--hook-out", HOOK_OUT, "--skip", "--k", "4", "--expansion", "2"]
    assert cli_train([*common, *tc_args, "--tokens", "1k", "--batch-size", "128"]) == 0
    saved = out / "L0.resid_post-to-L0.mlp_out-topk-32-k4"
    assert json.loads((saved / "dict_cfg.json").read_text())["skip"] is True

    # Several hooks in one pass.
    two = ["--hook", f"{HOOK},{HOOK_OUT}", "--k", "4", "--expansion", "2", "--tokens", "1k"]
    assert cli_train([*common, *two, "--batch-size", "128"]) == 0
    assert (out / "L0.mlp_out-topk-32-k4" / "sae_weights.safetensors").exists()
    assert (out / "L0.resid_post-topk-32-k4" / "sae_weights.safetensors").exists()

    # Clear errors naming the fix.
    with pytest.raises(ValueError, match=r"L5.resid_post.*cached hooks: L0.mlp_out, L0.resid_post"):
        cli_train([*common, "--hook", "L5.resid_post"])
    with pytest.raises(FileNotFoundError, match="interp-bench cache"):
        cli_train(["--activations", str(tmp_path / "nope"), "--out", str(out), "--hook", HOOK])
    with pytest.raises(ValueError, match="k must be in 1..d_sae=16, got 999"):
        cli_train([*common, "--hook", HOOK, "--k", "999", "--expansion", "1"])
    with pytest.raises(ValueError, match="both --hook-in and --hook-out"):
        cli_train([*common, "--hook-in", HOOK])
    with pytest.raises(ValueError, match="lower --batch-size"):
        cli_train([*common, "--hook", HOOK, "--batch-size", "1M"])
    with pytest.raises(ValueError, match="different lr.*--no-resume"):
        cli_train([*common, *sweep, "--lr", "5e-3"])
    with pytest.raises(ValueError, match="--l1-coefficient sweep does not apply to --arch topk"):
        cli_train([*common, "--hook", HOOK, "--l1", "1,2"])
    with pytest.raises(ValueError, match="dead_tokens must be positive"):
        cli_train([*common, "--hook", HOOK, "--dead-tokens", "0"])
    (tmp_path / "file").write_text("x")
    with pytest.raises(ValueError, match="is a file"):
        cli_train([*common[:2], "--out", str(tmp_path / "file"), "--hook", HOOK])
    for bad in (["--tokens", "inf"], ["--tokens", "-5"], ["--lr", "nan"]):
        with pytest.raises(SystemExit):  # argparse: one usage line, exit 2
            cli_train([*common, "--hook", HOOK, *bad])
    assert "not a count" in capsys.readouterr().err


def test_train_flags_come_from_the_config_fields():
    """Every DictionaryConfig / TrainConfig field a user sets has a flag whose help is the
    field's docstring, and whose default is the field's."""
    import argparse

    from interp_bench.commands import train as cmd
    from interp_bench.commands.config_args import field_docs

    parser = argparse.ArgumentParser()
    cmd.add_arguments(parser)
    helps = {a.dest: a for a in parser._actions}
    for cls in (DictionaryConfig, TrainConfig):
        for name, doc in field_docs(cls).items():
            if name in cmd._FROM_CACHE or name in ("extra", "d_sae"):
                continue
            assert helps[name].help.startswith(doc[:40]), name
    assert helps["adam_beta2"].default == TrainConfig.adam_beta2
    assert helps["warmup_steps"].default is None and "5%" in helps["warmup_steps"].help


def test_parse_count():
    import argparse

    from interp_bench.commands.counts import parse_count

    assert parse_count("50M") == 50_000_000
    assert parse_count("1k") == 1000
    assert parse_count("2.5B") == 2_500_000_000
    assert parse_count("4096") == 4096
    for bad in ("inf", "-5", "nan", "1e400", "ten"):
        with pytest.raises(argparse.ArgumentTypeError, match="not a count"):
            parse_count(bad)


def test_trainer_stops_on_tokens_whatever_the_batch_size():
    """The reader's batches, not TrainConfig.batch_size, decide how many steps a budget buys."""
    t = Trainer([topk_cfg()], tcfg(batch_size=128, tokens=640))
    t.fit([{HOOK: b[HOOK][:64]} for b in planted(20)])
    assert t.tokens_seen == 640 and t.step_idx == 10
    assert t.schedule.total_steps == 10


def test_schedule_scales_with_the_run():
    short = TrainConfig(tokens=400_000, batch_size=4096).schedule()
    assert short.total_steps == 98 and short.warmup_steps == 4
    assert short.sparsity_warmup_steps == 4 and short.dead_tokens == 40_000
    long = TrainConfig(tokens=10**9, batch_size=4096).schedule()
    assert (long.warmup_steps, long.sparsity_warmup_steps, long.dead_tokens) == (
        100,
        1000,
        10_000_000,
    )
    pinned = TrainConfig(tokens=10**6, warmup_steps=7, dead_tokens=5).schedule(step_tokens=1000)
    assert (pinned.total_steps, pinned.warmup_steps, pinned.dead_tokens) == (1000, 7, 5)
    # An SAE's window: at most SAE_DEAD_WINDOW, never under one step; a pinned one is pinned.
    assert (short.sae_dead_tokens, long.sae_dead_tokens, pinned.sae_dead_tokens) == (
        20_480,
        20_480,
        5,
    )
    tiny = TrainConfig(tokens=100_000, batch_size=4096).schedule()
    assert tiny.sae_dead_tokens == tiny.dead_tokens == 10_000
    huge_batch = TrainConfig(tokens=10**9, batch_size=65_536).schedule()
    assert huge_batch.sae_dead_tokens == 65_536


@pytest.mark.parametrize(
    "bad",
    [
        {"tokens": 0},
        {"tokens": -5},
        {"batch_size": 0},
        {"lr": -1.0},
        {"lr": float("nan")},
        {"dead_tokens": 0},
        {"checkpoint_every": -1},
        {"lr_decay": "step"},
    ],
)
def test_train_config_refuses_bad_values(bad):
    with pytest.raises(ValueError, match=next(iter(bad))):
        TrainConfig(**bad)


def jumprelu_cfg(threshold_lr: float | None = None) -> DictionaryConfig:
    return DictionaryConfig(
        d_in=D, d_sae=64, arch="jumprelu", hook_in=HOOK, jumprelu_threshold_lr=threshold_lr
    )


def threshold_group(t: Trainer) -> dict:
    d, (opt,) = t.dicts[0], t.optims
    (group,) = [g for g in opt.param_groups if any(p is d.act.log_threshold for p in g["params"])]
    assert group["params"] == [d.act.log_threshold] and len(opt.param_groups) == 2
    return group


def test_jumprelu_thresholds_train_at_their_own_learning_rate():
    """The thresholds get lr x jumprelu_threshold_lr (warm-up and decay included); Adam's first
    step moves every parameter by about its lr, so the thresholds move 10x further."""
    t = Trainer([jumprelu_cfg(10.0)], tcfg(lr=1e-3, warmup_steps=0))
    before = t.dicts[0].act.log_threshold.detach().clone()
    t.step(planted(1)[0])
    group = threshold_group(t)
    (rest,) = [g for g in t.optims[0].param_groups if g is not group]
    assert group["lr"] == pytest.approx(1e-2) and rest["lr"] == pytest.approx(1e-3)
    moved = (t.dicts[0].act.log_threshold.detach() - before).abs()
    assert moved.max().item() == pytest.approx(1e-2, rel=0.01)


@pytest.mark.parametrize("steps,scale", [(40, 4 / (3e-3 * 40)), (4000, 1.0)])
def test_jumprelu_threshold_lr_by_default_lets_thresholds_travel_e4(steps, scale):
    """None: 4 / (lr x steps) of the run as the trainer counts it at its first step, at least 1
    (the batch here is 128 rows, the config's batch_size 4096)."""
    t = Trainer([jumprelu_cfg()], tcfg(lr=3e-3, tokens=128 * steps, batch_size=4096))
    t.step(planted(1)[0])
    assert threshold_group(t)["lr_scale"] == pytest.approx(scale)


def test_one_group_optimizer_state_loads_into_the_threshold_group():
    """A checkpoint from before the split (one group, same parameter order) resumes: every
    parameter gets its own Adam moments back."""
    from interp_bench.training.optim_groups import load_optimizer

    a, b = Trainer([jumprelu_cfg()], tcfg()), Trainer([jumprelu_cfg()], tcfg())
    a.step(planted(1)[0])
    old = a.optims[0].state_dict()
    ids = [i for g in old["param_groups"] for i in g["params"]]
    old["param_groups"] = [{**old["param_groups"][0], "params": ids}]
    b.dicts[0].load_state_dict(a.dicts[0].state_dict())
    load_optimizer(b.optims[0], old)
    threshold_group(b)
    for (name, pa), pb in zip(a.dicts[0].named_parameters(), b.dicts[0].parameters(), strict=True):
        sa, sb = a.optims[0].state[pa], b.optims[0].state[pb]
        torch.testing.assert_close(sa["exp_avg"], sb["exp_avg"], msg=name)
        torch.testing.assert_close(sa["exp_avg_sq"], sb["exp_avg_sq"], msg=name)
    b.step(planted(2)[1])  # and it trains on


def test_jumprelu_resume_equals_a_straight_run(tmp_path):
    """The thresholds' group and its multiplier survive a checkpoint: same weights as straight."""
    data, cfgs = planted(12), [jumprelu_cfg()]
    tc = tcfg(tokens=128 * 20, checkpoint_every=7)
    straight = Trainer(cfgs, tc, out_dir=tmp_path / "a").fit(data)
    with pytest.raises(Crash):
        Trainer(cfgs, tc, out_dir=tmp_path / "b").fit(CrashAfter(data, 16))
    resumed = Trainer(cfgs, tc, out_dir=tmp_path / "b")
    assert_same(weights(straight), weights(resumed.fit(data)))
    assert threshold_group(resumed)["lr_scale"] == pytest.approx(4 / (3e-3 * 20))


def test_an_sae_hands_rare_latents_to_auxk_sooner_than_a_transcoder(monkeypatch):
    """Without dead_tokens, an SAE's dead window is at most SAE_DEAD_WINDOW (rare latents reach
    AuxK); a transcoder trained beside it keeps the run's (10% of its tokens)."""
    from interp_bench import config

    monkeypatch.setattr(config, "SAE_DEAD_WINDOW", 256)  # 2 steps; the run's window: 4 steps
    sae = topk_cfg()
    tc = topk_cfg(hook_out=HOOK_OUT, d_out=D, decoder_init="random")
    t = Trainer([sae, tc], tcfg(tokens=128 * 40, dead_tokens=None))
    seen: list[list[torch.Tensor]] = [[], []]
    for i, d in enumerate(t.dicts):
        with torch.no_grad():
            d.W_enc[:, :8] = 0.0  # latents 0..7 never reach the top k
            d.b_enc[:8] = -100.0
        orig = d.loss

        def spy(x, target=None, *, dead_mask=None, warmup=1.0, i=i, orig=orig):
            seen[i].append(dead_mask.clone())
            return orig(x, target, dead_mask=dead_mask, warmup=warmup)

        d.loss = spy
    for b in planted(6):
        t.step(b)
    assert (t.schedule.sae_dead_tokens, t.schedule.dead_tokens) == (256, 512)
    assert seen[0][2][:8].all() and not seen[1][2].any()  # after 2 steps: the SAE's only
    assert seen[1][4][:8].all()  # after 4 steps: the transcoder's too
