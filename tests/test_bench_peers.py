"""The benchmark's peer adapters (SAELens, sparsify) take real steps on small random data and are
measured by the same held-out evaluator as our dictionaries."""

import pytest
import torch

pytest.importorskip("sae_lens")
pytest.importorskip("sparsify")

from benchmarks import bench_train, peers  # noqa: E402
from benchmarks.peers import PeerDictionary  # noqa: E402
from interp_bench.dictionaries import evaluate  # noqa: E402

D_IN, D_SAE, K, B = 16, 64, 4, 128


def _data(seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(B, D_IN, generator=g) + 2.0


def _make(who: str, arch: str):
    if who == "sparsify":
        return peers.SparsifyPeer(D_IN, D_SAE, k=K, batch_size=B)
    return peers.SAELensPeer(arch, D_IN, D_SAE, k=K, batch_size=B, total_tokens=10 * B)


def _weights(peer) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in peer.sae.named_parameters()}


@pytest.mark.parametrize(
    "who,arch",
    [("sparsify", "topk"), ("sae_lens", "topk"), ("sae_lens", "jumprelu"), ("sae_lens", "relu")],
)
def test_peer_steps_and_evaluates(who, arch):
    peer = _make(who, arch)
    x = _data()
    before = _weights(peer)
    peer.step(x)
    peer.step(_data(1))
    after = _weights(peer)
    assert all(torch.isfinite(w).all() for w in after.values())
    changed = [n for n in before if not torch.equal(before[n], after[n])]
    assert "W_dec" in changed, f"{who}/{arch} did not update its decoder: {changed}"

    with peer.dictionary() as d:
        f = d.encode(x)
        recon = d.decode(f)
        stats = evaluate([d], [{d.cfg.hook_in: x}])[0]
    assert f.shape == (B, D_SAE) and recon.shape == (B, D_IN)
    assert torch.isfinite(recon).all()
    assert stats.tokens == B and 0 < stats.fvu < float("inf")
    if arch == "topk":
        assert int((f > 0).sum(-1).max()) <= K and stats.l0 <= K
    # Evaluation leaves training state alone (sparsify swaps its schedule-free average in and
    # out with two lerps, exact up to rounding).
    for n, w in _weights(peer).items():
        torch.testing.assert_close(w, after[n])


def test_sparsify_decode_matches_its_own_forward():
    """The adapter's dense latents decode to what sparsify's own encode -> decode gives."""
    peer = _make("sparsify", "topk")
    peer.step(_data())
    x = _data(1)
    with peer.dictionary() as d:
        top_acts, top_idx, _ = peer.sae.encode(x)
        expected = peer.sae.decode(top_acts, top_idx)
        torch.testing.assert_close(d.decode(d.encode(x)), expected)


def test_sparsify_follows_its_trainer_init():
    peer = peers.SparsifyPeer(D_IN, D_SAE, k=K, batch_size=B)
    x = _data()
    # sparsify.Trainer: lr = 5e-3 / sqrt(num_latents / 2**14), b_dec = mean of the first batch.
    assert peer.lr == pytest.approx(5e-3 / (D_SAE / 2**14) ** 0.5)
    peer.step(x)
    peer.opt.eval()
    norms = peer.sae.W_dec.norm(dim=1)
    peer.opt.train()
    assert torch.isfinite(norms).all()
    assert peer.global_step == 1


def _constant(value: torch.Tensor, hook: str = "x") -> PeerDictionary:
    """A dictionary that never fires and predicts ``value`` for every token."""
    return PeerDictionary(
        lambda x: torch.zeros(len(x), D_SAE),
        lambda f: value.expand(len(f), -1),
        torch.zeros(0),
        D_IN,
        D_SAE,
        hook,
    )


def test_held_out_counts_massive_tokens_by_the_whole_sets_median():
    """fvu_typical leaves out tokens above 10x the median norm of the whole held-out set, even
    when the first batch alone would set a higher threshold."""
    x = _data()
    x[:50] *= 5.0  # the first batch of 50 is larger than the rest: its median is ~5x
    x[[60, 80]] *= 30.0  # two massive-activation tokens, ~30x the overall median norm
    typical = torch.ones(len(x), dtype=torch.bool)
    typical[[60, 80]] = False
    ev = bench_train.held_out([_constant(x[typical].mean(0))], x, batch_size=50)[0]
    assert ev["outlier_tokens"] == 2
    assert ev["eval_tokens"] == B
    # The typical tokens' own mean reconstructs them at FVU 1; the outliers push all-token FVU up.
    assert ev["fvu_typical"] == pytest.approx(1.0, rel=1e-6)
    assert ev["fvu"] > 1.0
    assert ev["l0"] == 0.0 and ev["dead_frac"] == 1.0


def test_held_out_evaluates_dictionaries_on_different_hooks_in_one_pass():
    x = _data()
    mean = x.mean(0)
    evs = bench_train.held_out([_constant(mean, "a"), _constant(torch.zeros(D_IN), "b")], x)
    assert evs[0]["fvu"] == pytest.approx(1.0, rel=1e-6)
    assert evs[1]["fvu"] > 1.0  # predicting zero is worse than predicting the mean


@pytest.mark.parametrize("skip", [False, True])
def test_sparsify_transcoder_copies_into_our_dictionary_exactly(skip):
    """bench_transcoder evaluates sparsify's transcoder through our SparseDictionary: the copy
    must compute the same function as sparsify's own encode/decode (its averaged weights)."""
    from types import SimpleNamespace

    from benchmarks import bench_transcoder as bench

    args = SimpleNamespace(expansion=4, k=K, batch_size=B, seed=0)
    peer = bench.Sparsify(D_IN, args, skip=skip)
    g = torch.Generator().manual_seed(0)
    for _ in range(3):
        x = torch.randn(B, D_IN, generator=g) + 1.0
        peer.step({bench.HOOK_IN: x, bench.HOOK_OUT: torch.tanh(x) @ torch.ones(D_IN, D_IN)})
    ours = peer.dictionary()
    peer.opt.eval()
    with torch.no_grad():
        acts, idx, _ = peer.sae.encode(x)
        ref = peer.sae.decode(acts, idx)
        if skip:
            ref = ref + x @ peer.sae.W_skip.mT
    peer.opt.train()
    torch.testing.assert_close(ours(x), ref, rtol=1e-5, atol=1e-5)
    assert ours.W_dec.abs().sum() > 0  # sparsify's zero-initialised decoder did train


def test_train_row_times_the_probe_and_measures_every_dictionary():
    """bench_train's row through benchmarks.lockstep: ours and a peer are measured on the held-out
    set; the matmul probe is stepped and timed only."""
    from benchmarks.lockstep import PeerSAE

    def train():
        g = torch.Generator().manual_seed(2)
        while True:
            yield torch.randn(B, D_IN, generator=g) + 2.0

    data = bench_train.Data(D_IN, train, _data(3), "test", -1)
    trainers = {
        "ours": bench_train.OursAdapter("topk", D_IN, D_SAE, k=K, batch_size=B, tokens=3 * B),
        "sparsify": PeerSAE(peers.SparsifyPeer(D_IN, D_SAE, k=K, batch_size=B), bench_train.HOOK),
        "matmul": bench_train.MatmulProbe(D_IN, D_SAE),
    }
    row = bench_train.train_row(trainers, data, 3, B, log_every=0)
    assert list(row["quality"]) == ["ours", "sparsify"]
    assert set(row["seconds"]) == set(row["median_step_s"]) == {"ours", "sparsify", "matmul"}
    assert all(0 < row["median_step_s"][n] <= row["seconds"][n] for n in trainers)
    for ev in row["quality"].values():
        assert ev["eval_tokens"] == B and 0 < ev["fvu"] < float("inf") and ev["l0"] <= K


def test_transcoder_lr_rows_scale_the_base_rate():
    """bench_transcoder's "lr x4" row is 4x the width rule's rate, as RESULTS recorded it, not 4x
    the transcoder default (which is already short_run_boost times that)."""
    import argparse

    from benchmarks.bench_transcoder import Ours

    args = argparse.Namespace(expansion=4, k=4, batch_size=64, tokens=64 * 10)
    row = Ours(16, args, {"revive": "recenter"}, {"lr_scale": 4})
    assert row.trainer.lrs[0] == pytest.approx(4 * 1e-3 / (64 / 2**14) ** 0.5)
