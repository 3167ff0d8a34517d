"""The shuffled reader: exact coverage, determinism, alignment, bounded memory, rank split."""

from collections import Counter

import pytest
import torch

from activation_cache.cache import cache_activations
from activation_cache.reader import ActivationReader, hook_stats

N_SEQ, CTX = 40, 16
HOOKS = ["L0.mlp_in", "L0.mlp_out", "L1.resid_post"]


@pytest.fixture(scope="module")
def cached(tiny_model, tmp_path_factory):
    """40 sequences x 16 tokens in 10 shards of 4 sequences, fp32, plus reference activations."""
    g = torch.Generator().manual_seed(0)
    tokens = torch.randint(0, 50000, (N_SEQ, CTX), generator=g)
    tokens[:, 0] = 50256
    out = tmp_path_factory.mktemp("acts")
    cache_activations(
        tiny_model, tokens, HOOKS, out, dtype="float32", batch_size=8, shard_tokens=64,
        progress=False,
    )  # fmt: skip
    _, ref = tiny_model.run_with_cache(tokens)
    names = {"L0.mlp_in": "blocks.0.ln2.hook_normalized", "L0.mlp_out": "blocks.0.hook_mlp_out"}
    names["L1.resid_post"] = "blocks.1.hook_resid_post"
    return out, tokens, {h: ref[n] for h, n in names.items()}


def keys(batches) -> list[tuple[int, int]]:
    return [sp for b in batches for sp in zip(b["seq"].tolist(), b["pos"].tolist(), strict=True)]


def reader(out, **kw):
    kw = {"batch_size": 24, "buffer_tokens": 200, "with_positions": True} | kw
    return ActivationReader(out, kw.pop("hooks", HOOKS), kw.pop("batch_size"), **kw)


def test_every_non_bos_token_once_per_epoch_and_hooks_aligned(cached):
    out, tokens, ref = cached
    r = reader(out)
    assert r.n_tokens == N_SEQ * (CTX - 1) and r.shards_per_window == 3
    batches = list(r.epoch(0))
    assert len(batches) == r.n_batches == 25
    assert [len(b["seq"]) for b in batches] == [24] * 25
    seen = keys(batches)
    assert sorted(seen) == [(s, p) for s in range(N_SEQ) for p in range(1, CTX)]
    for b in batches:
        assert set(b) == set(HOOKS) | {"tokens", "seq", "pos"}
        assert torch.equal(b["tokens"], tokens[b["seq"], b["pos"]])
        for h in HOOKS:  # all hooks of a batch come from the same (seq, pos) rows
            assert b[h].dtype == torch.float32 and b[h].shape == (24, 64)
            torch.testing.assert_close(b[h], ref[h][b["seq"], b["pos"]], rtol=1e-5, atol=1e-5)


def test_shuffle_mixes_shards_and_is_deterministic(cached):
    out, _, _ = cached
    a, b = keys(reader(out, seed=3).epoch(0)), keys(reader(out, seed=3).epoch(0))
    assert a == b
    assert a != keys(reader(out, seed=4).epoch(0))
    assert a != keys(reader(out, seed=3).epoch(1))
    first = reader(out, seed=3).epoch(0).__next__()
    assert len({int(s) // 4 for s in first["seq"]}) > 1  # one batch draws from several shards
    r = reader(out, seed=3)
    assert keys(iter(r)) == a and keys(iter(r)) == keys(r.epoch(1))  # iterating advances epochs


def test_concurrent_iterations_do_not_share_buffers(cached):
    out, _, _ = cached
    r = reader(out, seed=5, buffer_tokens=64)
    for a, b in zip(r.epoch(0), r.epoch(0), strict=True):
        assert torch.equal(a["L1.resid_post"], b["L1.resid_post"])
    assert keys(r.epoch(0)) == keys(reader(out, seed=5, buffer_tokens=64).epoch(0))


def test_resume_at_batch_skips_windows_without_reading_them(cached):
    out, _, _ = cached
    full = keys(reader(out, seed=1).batches(epoch=2))
    r = reader(out, seed=1)
    loads = []
    real = r._load
    r._load = lambda w, slot: loads.append(w.index) or real(w, slot)
    tail = keys(r.batches(epoch=2, start_batch=17))
    assert tail == full[17 * 24 :]
    assert 0 not in loads and len(loads) < 4  # 4 windows per epoch; early ones never read
    assert keys(r.batches(epoch=2, start_batch=25)) == []


def test_buffer_is_bounded(cached):
    out, _, _ = cached
    r = reader(out, buffer_tokens=130, batch_size=7)
    n = sum(len(b["seq"]) for b in r.epoch(0))
    assert n == r.n_tokens
    rows_per_shard = 4 * CTX  # staged whole, BOS rows included
    assert r.shards_per_window == 2
    assert r.max_buffer_rows <= 2 * rows_per_shard + 7 - 1
    assert r.max_buffer_rows < r.n_tokens / 2


def test_rank_split_is_disjoint_and_covering(cached):
    out, _, _ = cached
    per_rank = [Counter(keys(reader(out, rank=i, world_size=3).epoch(0))) for i in range(3)]
    union = Counter()
    for c in per_rank:
        assert c and max(c.values()) == 1
        union += c
    assert sum(union.values()) == N_SEQ * (CTX - 1) and max(union.values()) == 1
    seqs = [{s // 4 for s, _ in c} for c in per_rank]  # whole shards per rank
    assert not (seqs[0] & seqs[1]) and not (seqs[1] & seqs[2])
    with pytest.raises(ValueError, match="cannot be split"):
        reader(out, rank=0, world_size=11)


def test_sequential_mode_serves_every_token_in_order(cached):
    out, tokens, ref = cached
    r = reader(out, shuffle=False, skip_bos=False, batch_size=50)
    batches = list(r.epoch(0))
    assert keys(batches) == [(s, p) for s in range(N_SEQ) for p in range(CTX)]
    assert len(batches[-1]["seq"]) == N_SEQ * CTX % 50
    x = torch.cat([b["L1.resid_post"] for b in batches])
    torch.testing.assert_close(x, ref["L1.resid_post"].reshape(-1, 64), rtol=1e-5, atol=1e-5)
    no_bos = keys(reader(out, shuffle=False, batch_size=50).epoch(0))
    assert no_bos == [(s, p) for s in range(N_SEQ) for p in range(1, CTX)]


def test_dtype_drop_last_and_hook_subset(cached):
    out, _, ref = cached
    r = ActivationReader(out, "L0.mlp_out", 64, dtype=torch.float16, drop_last=True, seed=2)
    batches = list(r)
    assert len(batches) == r.n_batches == N_SEQ * (CTX - 1) // 64
    assert set(batches[0]) == {"L0.mlp_out"} and batches[0]["L0.mlp_out"].dtype == torch.float16


def test_bf16_storage_reads_back(tiny_model, tmp_path):
    tokens = torch.randint(0, 50000, (6, 8), generator=torch.Generator().manual_seed(1))
    cache_activations(
        tiny_model, tokens, ["L1.mlp_out"], tmp_path, dtype="bfloat16", progress=False
    )
    _, ref = tiny_model.run_with_cache(tokens)
    b = next(iter(ActivationReader(tmp_path, ["L1.mlp_out"], 100, with_positions=True)))
    want = ref["blocks.1.hook_mlp_out"][b["seq"], b["pos"]].to(torch.bfloat16).float()
    torch.testing.assert_close(b["L1.mlp_out"], want, rtol=0, atol=0)


def test_bad_requests(cached):
    out, _, _ = cached
    with pytest.raises(ValueError, match="not in this cache"):
        ActivationReader(out, ["L1.mlp_out"], 8)
    with pytest.raises(ValueError, match="batch_size"):
        ActivationReader(out, HOOKS, 0)
    with pytest.raises(FileNotFoundError, match="not an activation cache"):
        ActivationReader(out / "nope", HOOKS, 8)


def test_hook_stats(cached):
    out, _, ref = cached
    x = ref["L1.resid_post"][:, 1:].reshape(-1, 64).double()
    stats = hook_stats(out, "L1.resid_post", max_tokens=10**6)
    assert stats.n_tokens == N_SEQ * (CTX - 1)
    torch.testing.assert_close(stats.mean, x.mean(0).float(), rtol=1e-5, atol=1e-5)
    assert stats.mean_norm == pytest.approx(float(x.norm(dim=1).mean()), rel=1e-5)
    files = list(out.glob("stats_L1.resid_post_*.json"))
    assert len(files) == 1
    again = hook_stats(out, "L1.resid_post", max_tokens=10**6)
    assert torch.equal(again.mean, stats.mean) and again.mean_norm == stats.mean_norm
    sample = hook_stats(out, "L1.resid_post", max_tokens=100)
    assert 100 <= sample.n_tokens < 120
    assert sample.mean_norm == pytest.approx(stats.mean_norm, rel=0.2)
