"""benchmarks/bench_clt.py's joint splice of both arms on the tiny model: it splices what `train`
would save (the trainers' folded, raw-activation dictionaries), not the input-scaled weights they
train. The splice itself (exact replacements keep the clean loss, CLT == per-layer transcoders
without cross-layer blocks, ...) is tested in test_joint_splice.py."""

from __future__ import annotations

import copy
import math

import pytest
import torch

from benchmarks import bench_clt
from interp_bench.analysis.joint_splice import joint_spliced_loss
from interp_bench.config import DictionaryConfig, TrainConfig
from interp_bench.dictionaries import load_dictionary
from interp_bench.dictionaries.crosslayer import CrossLayerConfig
from interp_bench.training.trainer import Trainer

pytestmark = pytest.mark.filterwarnings("ignore:HookedTransformer is deprecated")
FLOATS = ("ce_clean", "ce_spliced", "ce_zero", "ce_mean", "ce_error_added", "ce_recovered",
          "kl_spliced", "kl_zero", "kl_mean", "l0", "fvu")  # fmt: skip


def test_arms_are_spliced_as_the_cli_loads_them(tiny_model, tmp_path):
    g = torch.Generator().manual_seed(0)
    tokens = torch.randint(0, 5000, (8, 16), generator=g)
    tokens[:, 0] = tiny_model.tokenizer.bos_token_id
    ins, outs = ("L0.mlp_in", "L1.mlp_in"), ("L0.mlp_out", "L1.mlp_out")
    batches = bench_clt.collect(tiny_model, tokens, [*ins, *outs], batch_size=60)
    tc = TrainConfig(batch_size=60, tokens=3 * 60, checkpoint_every=0)
    per_layer = [DictionaryConfig(d_in=64, d_sae=128, d_out=64, k=8, hook_in=i, hook_out=o)
                 for i, o in zip(ins, outs, strict=True)]  # fmt: skip
    clt = CrossLayerConfig(d_in=64, d_sae=128, k=8, hooks_in=ins, hooks_out=outs)
    trainers = {
        "per-layer": Trainer(per_layer, tc, device="cpu", out_dir=tmp_path / "per-layer"),
        "clt": Trainer([clt], tc, device="cpu", out_dir=tmp_path / "clt"),
    }
    for step in range(3):
        for trainer in trainers.values():
            trainer.step(batches[step % len(batches)])

    got = bench_clt.joint_splices(tiny_model, trainers, tokens, batch_size=3)

    assert list(got) == ["per-layer", "clt"]
    for name, trainer in trainers.items():
        # The input scales are far from 1, so splicing the unfolded weights would be wrong.
        assert max(abs(math.log(s)) for s in trainer.scales.values()) > 0.1
        trainer.save()
        saved = [load_dictionary(trainer.out_dir / n).eval() for n in trainer.names]
        want = joint_spliced_loss(tiny_model, saved, tokens, name=name, batch_size=3)
        for key in FLOATS:
            assert getattr(got[name], key) == pytest.approx(getattr(want, key), rel=1e-5), key
        assert got[name].extra["layers"] == [0, 1] and got[name].n_tokens == 8 * 14
        unfolded = [copy.deepcopy(d).eval() for d in trainer.dicts]
        wrong = joint_spliced_loss(tiny_model, unfolded, tokens, batch_size=3)
        assert abs(wrong.ce_spliced - want.ce_spliced) > 1e-3


@pytest.mark.parametrize("flag", ["--clt-lr-mult", "--layer-lr-mult"])
def test_lr_multipliers_are_checked_before_anything_loads(flag, monkeypatch, capsys):
    def no_run(args):
        raise AssertionError("run() must not start")

    monkeypatch.setattr(bench_clt, "run", no_run)
    with pytest.raises(SystemExit) as exit_info:
        bench_clt.main([flag, "0"])
    assert exit_info.value.code == 2
    assert "must be positive" in capsys.readouterr().err
