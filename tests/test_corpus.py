"""Corpus packing, splitting, fingerprints and sources, on small temp texts and GPT-2 BPE."""

import random

import pytest
import torch

from activation_cache.corpus import CorpusConfig, load_corpus, strip_gutenberg

WORDS = [
    "the",
    "king",
    "queen",
    "crown",
    "sword",
    "night",
    "day",
    "love",
    "death",
    "river",
    "stone",
    "light",
    "fool",
    "storm",
]


def _docs(n_docs=3, n_words=400, seed=0):
    rng = random.Random(seed)
    return [
        " ".join(rng.choice(WORDS) + rng.choice(["", ",", ".", "!\n"]) for _ in range(n_words))
        for _ in range(n_docs)
    ]


@pytest.fixture
def text_dir(tmp_path):
    folder = tmp_path / "texts"
    folder.mkdir()
    for i, doc in enumerate(_docs()):
        (folder / f"doc{i}.txt").write_text(doc)
    return folder


def _stream(docs, tok):
    out = []
    for doc in docs:
        out += tok(doc, add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
    return out


def test_windows_start_with_bos_and_reproduce_stream(text_dir, gpt2_tokenizer):
    cfg = CorpusConfig(source=str(text_dir), context_len=32, eval_fraction=0.0)
    s = load_corpus(cfg, gpt2_tokenizer)
    assert s.train.dtype == torch.int64 and s.train.shape[1] == 32
    assert s.eval.shape == (0, 32)
    assert (s.train[:, 0] == gpt2_tokenizer.bos_token_id).all()
    stream = _stream(_docs(), gpt2_tokenizer)
    body = s.train[:, 1:].reshape(-1).tolist()
    assert len(stream) - len(body) < 31  # only the last partial window is dropped
    assert body == stream[: len(body)]
    assert s.n_tokens == s.train.numel()


def test_split_is_disjoint_partition_and_deterministic(
    text_dir, gpt2_tokenizer, monkeypatch, tmp_path
):
    full = load_corpus(
        CorpusConfig(source=str(text_dir), context_len=16, eval_fraction=0.0), gpt2_tokenizer
    )
    cfg = CorpusConfig(source=str(text_dir), context_len=16, eval_fraction=0.2, seed=3)
    a = load_corpus(cfg, gpt2_tokenizer)
    assert len(a.eval) == round(0.2 * len(full.train))
    rows = lambda t: [tuple(r) for r in t.tolist()]  # noqa: E731
    assert sorted(rows(a.train) + rows(a.eval)) == sorted(rows(full.train))
    assert not set(rows(a.train)) & set(rows(a.eval))
    # each split keeps corpus order
    order = {r: i for i, r in enumerate(rows(full.train))}
    for split in (a.train, a.eval):
        idx = [order[r] for r in rows(split)]
        assert idx == sorted(idx)

    monkeypatch.setenv("INTERP_BENCH_CACHE", str(tmp_path / "fresh-cache"))  # recompute, no cache
    b = load_corpus(cfg, gpt2_tokenizer)
    assert torch.equal(a.train, b.train) and torch.equal(a.eval, b.eval)
    assert a.fingerprint == b.fingerprint
    c = load_corpus(CorpusConfig(**{**cfg.to_dict(), "seed": 4}), gpt2_tokenizer)
    assert not torch.equal(a.eval, c.eval)
    assert c.fingerprint != a.fingerprint


def test_fingerprint_follows_content_not_location(text_dir, gpt2_tokenizer, tmp_path):
    cfg = CorpusConfig(source=str(text_dir / "doc0.txt"), context_len=16)
    a = load_corpus(cfg, gpt2_tokenizer)
    moved = tmp_path / "elsewhere.txt"
    moved.write_text((text_dir / "doc0.txt").read_text())
    b = load_corpus(CorpusConfig(**{**cfg.to_dict(), "source": str(moved)}), gpt2_tokenizer)
    assert a.fingerprint == b.fingerprint
    moved.write_text(moved.read_text() + " x")
    c = load_corpus(CorpusConfig(**{**cfg.to_dict(), "source": str(moved)}), gpt2_tokenizer)
    assert c.fingerprint != a.fingerprint
    d = load_corpus(CorpusConfig(**{**cfg.to_dict(), "context_len": 17}), gpt2_tokenizer)
    assert d.fingerprint != a.fingerprint


def test_max_tokens_takes_a_prefix(text_dir, gpt2_tokenizer):
    base = CorpusConfig(source=str(text_dir), context_len=16, eval_fraction=0.0)
    full = load_corpus(base, gpt2_tokenizer)
    small = load_corpus(CorpusConfig(**{**base.to_dict(), "max_tokens": 100}), gpt2_tokenizer)
    assert small.n_tokens == 96 and small.n_tokens <= 100
    assert torch.equal(small.train, full.train[:6])


def test_empty_corpus_names_the_fix(tmp_path, gpt2_tokenizer):
    empty = tmp_path / "empty.txt"
    empty.write_text("")
    with pytest.raises(ValueError, match="add text"):
        load_corpus(CorpusConfig(source=str(empty)), gpt2_tokenizer)
    short = tmp_path / "short.txt"
    short.write_text("Only a few words here.")
    with pytest.raises(ValueError, match="fewer than"):
        load_corpus(CorpusConfig(source=str(short), context_len=128), gpt2_tokenizer)
    (tmp_path / "nothing").mkdir()
    with pytest.raises(ValueError, match="no .txt files"):
        load_corpus(CorpusConfig(source=str(tmp_path / "nothing")), gpt2_tokenizer)
    with pytest.raises(FileNotFoundError):
        load_corpus(CorpusConfig(source=str(tmp_path / "missing.txt")), gpt2_tokenizer)


def test_save_to_disk_folder_matches_text_files(text_dir, tmp_path, gpt2_tokenizer):
    import datasets

    folder = tmp_path / "ds"
    datasets.Dataset.from_dict({"body": _docs()}).save_to_disk(str(folder))
    cfg = CorpusConfig(source=str(folder), text_column="body", context_len=32, eval_fraction=0.0)
    from_disk = load_corpus(cfg, gpt2_tokenizer)
    from_txt = load_corpus(
        CorpusConfig(source=str(text_dir), context_len=32, eval_fraction=0.0), gpt2_tokenizer
    )
    assert torch.equal(from_disk.train, from_txt.train)
    with pytest.raises(ValueError, match="text_column"):
        load_corpus(CorpusConfig(source=str(folder)), gpt2_tokenizer)

    dd = tmp_path / "dd"
    datasets.DatasetDict(
        {
            "train": datasets.Dataset.from_dict({"text": _docs()[:1]}),
            "validation": datasets.Dataset.from_dict({"text": _docs()[1:2]}),
        }
    ).save_to_disk(str(dd))
    val = load_corpus(
        CorpusConfig(source=str(dd), split="validation", context_len=32), gpt2_tokenizer
    )
    expected = _stream(_docs()[1:2], gpt2_tokenizer)
    assert val.train[0, 1:].tolist() == expected[:31] or val.eval[0, 1:].tolist() == expected[:31]
    with pytest.raises(ValueError, match="no split 'test'"):
        load_corpus(CorpusConfig(source=str(dd), split="test"), gpt2_tokenizer)


def test_hub_dataset_offline_fails_with_one_clear_line(monkeypatch, gpt2_tokenizer):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ValueError, match="shakespeare") as err:
        load_corpus(CorpusConfig(source="no-such-org/no-such-dataset"), gpt2_tokenizer)
    assert "\n" not in str(err.value)


def test_strip_gutenberg_header_and_footer():
    new = (
        "The Project Gutenberg EBook of Hamlet\nlicence text\n"
        "*** START OF THIS PROJECT GUTENBERG EBOOK HAMLET ***\n\nWho's there?\n"
        "*** END OF THIS PROJECT GUTENBERG EBOOK HAMLET ***\nmore licence\n"
    )
    assert strip_gutenberg(new) == "Who's there?\n"
    old = (
        "**The Project Gutenberg Etext of Lear**\nsmall print\n"
        "*END*THE SMALL PRINT! FOR PUBLIC DOMAIN ETEXTS*Ver.04.29.93*END*\n"
        "Nothing will come of nothing.\nEnd of Project Gutenberg Etext of King Lear\n"
    )
    assert strip_gutenberg(old) == "Nothing will come of nothing.\n"
    assert strip_gutenberg("plain text\n") == "plain text\n"


@pytest.mark.slow
def test_embedded_shakespeare(gpt2_tokenizer):
    s = load_corpus(CorpusConfig(max_tokens=20000), gpt2_tokenizer)
    assert s.n_tokens == 20000 // 128 * 128
    assert len(s.eval) == round(0.05 * (20000 // 128))
    text = gpt2_tokenizer.decode(s.train[:, 1:].reshape(-1))
    assert "Gutenberg" not in text
    assert "ALL'S WELL THAT ENDS WELL" in text  # first file in sorted order
