"""The benchmark's peer adapters (SAELens, sparsify) take real steps on small random data."""

import importlib.util
import sys
from pathlib import Path

import pytest
import torch

BENCH = Path(__file__).resolve().parents[1] / "benchmarks"

pytest.importorskip("sae_lens")
pytest.importorskip("sparsify")


def _load(name: str):
    if str(BENCH) not in sys.path:
        sys.path.insert(0, str(BENCH))
    spec = importlib.util.spec_from_file_location(name, BENCH / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules[name] = mod  # dataclasses look their module up there
    spec.loader.exec_module(mod)
    return mod


D_IN, D_SAE, K, B = 16, 64, 4, 128


def _data(seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(B, D_IN, generator=g) + 2.0


def _make(peers, who: str, arch: str):
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
    peers = _load("peers")
    peer = _make(peers, who, arch)
    x = _data()
    before = _weights(peer)
    peer.step(x)
    peer.step(_data(1))
    after = _weights(peer)
    assert all(torch.isfinite(w).all() for w in after.values())
    changed = [n for n in before if not torch.equal(before[n], after[n])]
    assert "W_dec" in changed, f"{who}/{arch} did not update its decoder: {changed}"

    recon, acts = peer.evaluate(x)
    assert recon.shape == (B, D_IN) and acts.shape == (B, D_SAE)
    assert torch.isfinite(recon).all()
    l0 = (acts != 0).sum(-1)
    if arch == "topk":
        assert int(l0.max()) <= K
    # Evaluation leaves training state alone (sparsify swaps its schedule-free average in and
    # out with two lerps, exact up to rounding).
    for n, w in _weights(peer).items():
        torch.testing.assert_close(w, after[n])


def test_sparsify_follows_its_trainer_init():
    peers = _load("peers")
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


def test_evaluate_metrics_on_a_known_reconstruction():
    bench = _load("bench_train")

    class Exact:
        def evaluate(self, x):
            acts = torch.zeros(x.shape[0], D_SAE)
            acts[:, :3] = 1.0
            return x.clone(), acts

    class Mean:
        def __init__(self, mean):
            self.mean = mean

        def evaluate(self, x):
            return self.mean.expand_as(x), torch.zeros(x.shape[0], D_SAE)

    x = _data()
    ev = bench.evaluate(Exact(), x, batch_size=50)
    assert ev["fvu"] == pytest.approx(0.0, abs=1e-12)
    assert ev["l0"] == pytest.approx(3.0)
    assert ev["dead_frac"] == pytest.approx(1 - 3 / D_SAE)
    ev = bench.evaluate(Mean(x.mean(0)), x, batch_size=50)
    assert ev["fvu"] == pytest.approx(1.0, rel=1e-5)
    assert ev["l0"] == 0.0 and ev["dead_frac"] == 1.0


def test_evaluate_separates_massive_activation_tokens():
    """fvu_typical leaves out tokens above 10x the median norm; fvu counts them."""
    bench = _load("bench_train")
    x = _data()
    x[[3, 17]] *= 100.0  # two massive-activation tokens
    typical = torch.ones(len(x), dtype=torch.bool)
    typical[[3, 17]] = False
    mean_t = x[typical].mean(0)

    class ExactOnOutliers:  # reconstructs the outliers exactly, ordinary tokens by their mean
        def evaluate(self, xb):
            big = xb.norm(dim=1, keepdim=True) > 10 * x.norm(dim=1).median()
            return torch.where(big, xb, mean_t.expand_as(xb)), torch.ones(len(xb), D_SAE)

    ev = bench.evaluate(ExactOnOutliers(), x, batch_size=50)
    assert ev["outlier_tokens"] == 2
    assert ev["fvu_typical"] == pytest.approx(1.0, rel=1e-5)
    assert ev["fvu"] < 0.05  # the two outliers hold almost all of the variance


@pytest.mark.parametrize("skip", [False, True])
def test_sparsify_transcoder_copies_into_our_dictionary_exactly(skip):
    """bench_transcoder evaluates sparsify's transcoder through our SparseDictionary: the copy
    must compute the same function as sparsify's own encode/decode (its averaged weights)."""
    from types import SimpleNamespace

    bench = _load("bench_transcoder")
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
