"""The sparse TopK path computes the same gradients as the dense one; JumpReLU / Step STEs follow
Rajamanoharan et al. 2024; BatchTopK's inference threshold."""

from __future__ import annotations

import pytest
import torch

from interp_bench.config import DictionaryConfig
from interp_bench.dictionaries import SparseDictionary, auxk
from interp_bench.dictionaries.activations import JumpReLUFn, StepFn, kl_sparsity
from interp_bench.dictionaries.topk import (
    SparseDecode,
    TopKLayout,
    choose_sparse,
    dense_decode,
    gather_pre,
    sparse_decode,
    topk_rows,
)

D = torch.float64


def test_gather_pre_and_sparse_decode_gradcheck():
    torch.manual_seed(0)
    B, d, F, k = 6, 5, 12, 3
    x = torch.randn(B, d, dtype=D, requires_grad=True)
    W = torch.randn(d, F, dtype=D, requires_grad=True)
    b = torch.randn(F, dtype=D, requires_grad=True)
    shift = torch.randn(d, dtype=D, requires_grad=True)
    idx = torch.randint(0, F, (B, k))
    idx[0, 1] = idx[0, 0]  # a repeated latent in one row (AuxK next to TopK) must add up
    layout = TopKLayout(idx, F)

    def enc(x, shift, W, b):
        pre = ((x - shift) @ W + b).detach()
        return gather_pre(x, shift, W, b, pre, layout)

    assert torch.autograd.gradcheck(enc, (x, shift, W, b))
    vals = torch.randn(B, k, dtype=D, requires_grad=True)
    Wd = torch.randn(F, 7, dtype=D, requires_grad=True)
    assert torch.autograd.gradcheck(lambda v, w: SparseDecode.apply(v, layout, w), (vals, Wd))
    assert torch.allclose(sparse_decode(vals, idx, Wd), dense_decode(vals, idx, Wd))


@pytest.mark.parametrize("arch", ["topk", "batchtopk"])
@pytest.mark.parametrize("transcoder", [False, True])
@pytest.mark.parametrize(("aux_max", "revive"), [(0, "none"), (100, "none"), (100, "linear")])
def test_sparse_loss_gradients_equal_dense(arch, transcoder, aux_max, revive, monkeypatch):
    """The sparse path equals the dense reference, with AuxK through the sparse kernels
    (aux_max 0) or through dense products over the dead latents (TopK, aux_max 100)."""
    monkeypatch.setattr(auxk, "DENSE_AUX_MAX", aux_max)
    torch.manual_seed(0)
    d_out = 10 if transcoder else None
    cfg = DictionaryConfig(
        16, 96, arch=arch, k=6, d_out=d_out, skip=transcoder, auxk_k=5, revive=revive
    )
    dense = SparseDictionary(cfg, dtype=D)
    with torch.no_grad():
        for p in dense.parameters():
            p.add_(0.1 * torch.randn_like(p))
    sparse = SparseDictionary(DictionaryConfig(**{**cfg.to_dict(), "decode": "sparse"}), dtype=D)
    dense.cfg.decode = "dense"
    sparse.load_state_dict(dense.state_dict())
    assert sparse.sparse_decode and not dense.sparse_decode
    x = torch.randn(40, 16, dtype=D)
    y = torch.randn(40, 10, dtype=D) if transcoder else None
    dead = torch.rand(96) < 0.5
    outs = []
    for m in (dense, sparse):
        out = m.loss(x, y, dead_mask=dead)
        out.loss.backward()
        outs.append(out)
    assert outs[0].aux.item() > 0
    assert torch.allclose(outs[0].loss, outs[1].loss, rtol=1e-12)
    assert torch.equal(outs[0].fire_counts, outs[1].fire_counts) and outs[0].l0 == outs[1].l0
    for (name, p), q in zip(dense.named_parameters(), sparse.parameters(), strict=True):
        assert p.grad is not None, name
        assert torch.allclose(p.grad, q.grad, rtol=1e-9, atol=1e-12), name
    with torch.no_grad():
        assert torch.allclose(dense(x), sparse(x))
    if arch == "batchtopk":
        assert dense.act.topk_threshold.item() == sparse.act.topk_threshold.item() > 0


@pytest.mark.parametrize("transcoder", [False, True])
@pytest.mark.parametrize("aux_max", [0, 100])
def test_auxk_reads_every_fourth_row_of_the_batch(transcoder, aux_max, monkeypatch):
    """auxk_stride 4: AuxK's loss on a batch of 40 is its loss on rows 0, 4, ..., 36 alone
    (TopK chooses per token, so those rows choose the same latents), through either path."""
    monkeypatch.setattr(auxk, "DENSE_AUX_MAX", aux_max)
    torch.manual_seed(0)
    cfg = DictionaryConfig(16, 96, k=6, d_out=10 if transcoder else None, auxk_k=5,
                           revive="none", decode="sparse", auxk_stride=4)  # fmt: skip
    m = SparseDictionary(cfg, dtype=D)
    x = torch.randn(40, 16, dtype=D)
    y = torch.randn(40, 10, dtype=D) if transcoder else x
    dead = torch.rand(96) < 0.5
    quarter = m.loss(x, y, dead_mask=dead).aux
    m.cfg.auxk_stride = 1
    assert torch.allclose(quarter, m.loss(x[::4], y[::4], dead_mask=dead).aux, rtol=1e-12)
    assert not torch.allclose(quarter, m.loss(x, y, dead_mask=dead).aux)


def test_choose_sparse():
    assert choose_sparse(32, 4608) and not choose_sparse(64, 128)
    assert choose_sparse(64, 128, "sparse") and not choose_sparse(1, 4608, "dense")


def test_jumprelu_ste_matches_formula():
    torch.manual_seed(0)
    eps = 0.1
    z = torch.tensor([[0.05, 0.28, 0.31, 0.36, 1.0], [0.0, 0.25, 0.34, 0.5, -1.0]], dtype=D)
    z.requires_grad_(True)
    theta = torch.full((5,), 0.3, dtype=D, requires_grad=True)
    g = torch.randn(2, 5, dtype=D)
    out = JumpReLUFn.apply(z, theta, eps)
    assert torch.equal(out.detach(), z.detach() * (z.detach() > 0.3))
    out.backward(g)
    inside = ((z.detach() - 0.3).abs() < eps / 2).to(D)
    assert torch.allclose(z.grad, (z.detach() > 0.3).to(D) * g)
    assert torch.allclose(theta.grad, (-(0.3 / eps) * inside * g).sum(0))
    # the window is strict: |z - theta| < eps / 2
    assert inside[0].tolist() == [0, 1, 1, 0, 0] and inside[1].tolist() == [0, 1, 1, 0, 0]

    theta.grad = None
    z.grad = None
    StepFn.apply(z, theta, eps).backward(g)
    assert z.grad is None
    assert torch.allclose(theta.grad, (-(1 / eps) * inside * g).sum(0))


def test_jumprelu_l0_penalty_pushes_thresholds_up():
    torch.manual_seed(0)
    m = SparseDictionary(DictionaryConfig(8, 32, arch="jumprelu", jumprelu_bandwidth=2.0))
    out = m.loss(torch.randn(256, 8), warmup=1.0)
    out.sparsity.backward()
    assert out.sparsity.item() == pytest.approx(m.cfg.l0_coefficient * out.l0.item(), rel=1e-5)
    assert (m.act.log_threshold.grad <= 0).all() and (m.act.log_threshold.grad < 0).any()


@pytest.mark.parametrize("bad", [0.0, -1.0, float("nan")])
def test_jumprelu_threshold_lr_must_be_positive(bad):
    with pytest.raises(ValueError, match="jumprelu_threshold_lr must be positive"):
        DictionaryConfig(8, 32, arch="jumprelu", jumprelu_threshold_lr=bad)


def test_batchtopk_threshold_and_inference():
    torch.manual_seed(0)
    cfg = DictionaryConfig(16, 64, arch="batchtopk", k=4, threshold_ema=0.0)
    m = SparseDictionary(cfg)
    x = torch.randn(128, 16)
    out = m.loss(x)
    assert out.l0.item() == pytest.approx(4.0)  # k * B latents in the batch, per token on average
    acts = m.act.train_acts(m.pre_acts(x))
    assert m.act.topk_threshold.item() == pytest.approx(acts[acts > 0].min().item())
    with torch.no_grad():
        f = m.encode(x)
    pre = m.pre_acts(x).detach()
    assert torch.equal(f > 0, pre > m.act.topk_threshold)
    assert 2.0 < (f > 0).sum(-1).float().mean() < 6.0


def test_batchtopk_threshold_is_a_bias_corrected_average():
    """From 0 the EMA would be 0.99^t short after t steps; each batch weighs ema^age over the
    total weight, so the first batch gives its own value and later ones average."""
    cfg = DictionaryConfig(16, 64, arch="batchtopk", k=4, threshold_ema=0.9)
    m = SparseDictionary(cfg)
    m.act.update_threshold(torch.tensor([0.0, 2.0, 3.0]))
    assert m.act.topk_threshold.item() == pytest.approx(2.0)
    m.act.update_threshold(torch.tensor([1.0, 5.0]))
    want = (0.9 * 0.1 * 2.0 + 0.1 * 1.0) / (0.9 * 0.1 + 0.1)
    assert m.act.topk_threshold.item() == pytest.approx(want)
    m.act.update_threshold(torch.zeros(3))  # nothing survived: unchanged
    assert m.act.topk_threshold.item() == pytest.approx(want)
    old = {k: v for k, v in m.state_dict().items() if not k.endswith("threshold_weight")}
    fresh = SparseDictionary(cfg)
    fresh.load_state_dict(old)  # a state saved before the correction: a finished threshold
    assert fresh.act.threshold_weight.item() == 1.0
    fresh.act.update_threshold(torch.tensor([1.0]))
    assert fresh.act.topk_threshold.item() == pytest.approx(0.9 * want + 0.1 * 1.0)


def test_kl_penalty_is_zero_at_target_and_positive_elsewhere():
    rho = 0.05
    at_target = torch.full((1000, 3), 0.0)
    at_target[:50] = 50.0  # tanh -> 1 on 5% of tokens
    assert kl_sparsity(at_target, rho).item() == pytest.approx(0.0, abs=1e-6)
    assert kl_sparsity(torch.full((1000, 3), 2.0), rho).item() > 1.0


@pytest.mark.parametrize(
    "n,k,dtype,ties",
    [
        (1024, 8, torch.float32, False),  # two levels of group maxima
        (4608, 32, torch.bfloat16, False),  # bench_train's shape
        (2048, 16, torch.bfloat16, True),  # bf16 with heavy ties
        (1030, 8, torch.float32, False),  # not divisible by the group: plain topk
        (512, 1, torch.float32, True),
    ],
)
def test_topk_rows_equals_torch_topk(n, k, dtype, ties):
    torch.manual_seed(0)
    pre = torch.randn(64, n)
    if ties:
        pre = pre.mul(2).round()  # few distinct values: many equal candidates at the k-th place
    pre = pre.to(dtype)
    values, idx = topk_rows(pre, k)
    ref = pre.topk(k, dim=-1).values
    assert torch.equal(values.sort(-1).values, ref.sort(-1).values)
    assert torch.equal(pre.gather(1, idx), values)
    assert all(len(set(row.tolist())) == k for row in idx)  # k distinct latents per row


@pytest.mark.parametrize("flat", [False, True])
def test_exact_values_at_layout_equal_dense_product(flat):
    torch.manual_seed(0)
    B, d, F = 8, 16, 40
    x, W, b = torch.randn(B, d), torch.randn(d, F), torch.randn(F)
    pre = torch.addmm(b, x, W)
    if flat:
        layout = TopKLayout.from_flat(torch.randperm(B * F)[:30], B, F)
    else:
        idx = torch.randint(0, F, (B, 5))
        idx[0, 1] = idx[0, 0]  # repeated latents (AuxK next to TopK) are read twice
        layout = TopKLayout(idx, F)
    torch.testing.assert_close(layout.exact(x, W, b), layout.gather(pre), rtol=1e-5, atol=1e-5)


# Seeds for which bf16 and fp32 products choose the same latents (TopK, BatchTopK and AuxK): in
# general a near-tie at the k-th latent can flip, which is the only effect of bf16 selection.
@pytest.mark.parametrize("arch,seed", [("topk", 1), ("batchtopk", 3)])
def test_bf16_selection_gives_fp32_values_and_gradients(arch, seed):
    """Choosing latents from a bf16 product changes nothing else: the chosen values, the loss
    and the gradients are the fp32 ones."""
    torch.manual_seed(seed)
    cfg = DictionaryConfig(16, 96, arch=arch, k=6, decode="sparse", auxk_k=5, select="fp32")
    ref = SparseDictionary(cfg)
    x = torch.randn(40, 16)
    dead = torch.rand(96) < 0.5
    low = SparseDictionary(DictionaryConfig(**{**cfg.to_dict(), "select": "bf16"}))
    low.load_state_dict(ref.state_dict())
    pre, pre_bf16 = ref.selection_pre(x), low.selection_pre(x)  # b_dec is 0 at init
    assert pre.dtype == torch.float32 and pre_bf16.dtype == torch.bfloat16
    dead_idx = dead.nonzero().flatten()
    p, q = pre[:, dead_idx], pre_bf16[:, dead_idx]  # AuxK's choice among dead latents
    assert torch.equal(p.topk(5).indices.sort(-1).values, q.topk(5).indices.sort(-1).values)
    if arch == "topk":
        assert torch.equal(
            pre.topk(6).indices.sort(-1).values, pre_bf16.topk(6).indices.sort(-1).values
        )
    else:
        assert torch.equal(
            ref.act.select(pre)[1].sort().values, ref.act.select(pre_bf16)[1].sort().values
        )
    outs = []
    for m in (ref, low):
        out = m.loss(x, dead_mask=dead)
        out.loss.backward()
        outs.append(out)
    assert outs[0].aux.item() > 0
    torch.testing.assert_close(outs[0].loss, outs[1].loss, rtol=1e-6, atol=1e-6)
    for p, q in zip(ref.parameters(), low.parameters(), strict=True):
        torch.testing.assert_close(p.grad, q.grad, rtol=1e-5, atol=1e-6)


def test_batchtopk_threshold_window_follows_the_run_length():
    """10% of the run, 1 to 100 steps: a 100-step run forgets its early thresholds (at 0.99 its
    inference fired L0 ~20 for k 32), a long one keeps Bussmann et al.'s 0.99."""
    from interp_bench.config import TrainConfig
    from interp_bench.dictionaries.activations import threshold_decay
    from interp_bench.training.trainer import Trainer

    assert threshold_decay(100) == pytest.approx(0.9)
    assert threshold_decay(1000) == threshold_decay(10**6) == pytest.approx(0.99)
    assert threshold_decay(5) == 0.0
    decays = [threshold_decay(s) for s in range(1, 2000)]
    assert all(a <= b for a, b in zip(decays, decays[1:], strict=False))

    x = {"x": torch.randn(32, 16)}
    tc = TrainConfig(batch_size=32, tokens=32 * 100, checkpoint_every=0)
    for set_ema, want in ((None, 0.9), (0.95, 0.95)):
        cfg = DictionaryConfig(16, 64, arch="batchtopk", k=4, hook_in="x", threshold_ema=set_ema)
        t = Trainer([cfg], tc, device="cpu")
        t.step(x)
        assert t.dicts[0].act.ema == pytest.approx(want)


@pytest.mark.parametrize("bad", [1.0, -0.1])
def test_threshold_ema_must_be_a_decay(bad):
    with pytest.raises(ValueError, match="threshold_ema must be in"):
        DictionaryConfig(8, 32, arch="batchtopk", threshold_ema=bad)
