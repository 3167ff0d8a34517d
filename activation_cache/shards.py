"""Shard files (safetensors) and the cache's `manifest.json`.

A shard holds one `[n_tokens, d]` tensor per hook, keyed by its short name, plus `tokens`
(int32), `seq` (int64, global sequence index) and `pos` (int32) for the same rows. Shards are
written to a temporary name, fsynced and renamed, so a file named `shard_NNNNN.safetensors`
is always whole; the manifest (also temp + rename) lists only shards that finished, each with its
sha256, so a killed run resumes after the last listed shard.

We write and parse the safetensors container ourselves (8-byte little-endian header length, JSON
header, raw little-endian data): the writer hashes while it writes, and the reader memory-maps
tensors without going through a copy.
"""

from __future__ import annotations

import hashlib
import json
import os
import threading
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch

from .names import check_hook_name, check_shard_file

MANIFEST = "manifest.json"
FORMAT = "interp-bench-activations/1"

# safetensors dtype tag <-> torch dtype; bf16 travels through numpy as uint16.
_ST_DTYPES = {
    "F32": torch.float32,
    "F16": torch.float16,
    "BF16": torch.bfloat16,
    "I64": torch.int64,
    "I32": torch.int32,
}
_TORCH_TO_ST = {v: k for k, v in _ST_DTYPES.items()}
_ST_TO_NUMPY = {
    "F32": np.float32,
    "F16": np.float16,
    "BF16": np.uint16,
    "I64": np.int64,
    "I32": np.int32,
}
STORAGE_DTYPES = {"float16": torch.float16, "bfloat16": torch.bfloat16, "float32": torch.float32}


class ShardError(ValueError):
    """A shard is missing, truncated or fails its checksum; the message names the file.

    A `ValueError` so the CLI reports it as one line instead of a traceback.
    """


def shard_name(index: int) -> str:
    return f"shard_{index:05d}.safetensors"


@dataclass
class ShardInfo:
    file: str
    n_tokens: int
    seq_start: int  # first global sequence index in the shard
    seq_end: int  # one past the last
    sha256: str
    bytes: int


@dataclass
class Manifest:
    """All that is needed to read, check and resume a cache; `config` must match to resume."""

    model: str
    hooks: list[dict]  # [{"short", "tl_name", "layer", "kind", "d"}]
    dtype: str
    context_len: int
    n_sequences: int  # planned for the whole cache
    seqs_per_shard: int
    tokenizer: str = ""
    corpus_fingerprint: str = ""
    config: dict = field(default_factory=dict)
    shards: list[ShardInfo] = field(default_factory=list)
    complete: bool = False
    format: str = FORMAT

    @property
    def n_tokens(self) -> int:
        return sum(s.n_tokens for s in self.shards)

    @property
    def n_tokens_planned(self) -> int:
        return self.n_sequences * self.context_len

    @property
    def total_bytes(self) -> int:
        return sum(s.bytes for s in self.shards)

    def hook(self, short: str) -> dict:
        for h in self.hooks:
            if h["short"] == short:
                return h
        raise ValueError(
            f"hook {short!r} is not in this cache; it holds {', '.join(self.hook_names)}"
        )

    @property
    def hook_names(self) -> list[str]:
        return [h["short"] for h in self.hooks]

    def to_json(self) -> str:
        d = asdict(self)
        d["n_tokens"] = self.n_tokens
        return json.dumps(d, indent=1)

    @classmethod
    def from_json(cls, text: str) -> Manifest:
        d = json.loads(text)
        d.pop("n_tokens", None)
        d["shards"] = [ShardInfo(**s) for s in d.get("shards", [])]
        return cls(**d)


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def cache_tag(config: dict) -> str:
    """A short hash of a cache's `config`, carried by every temp file and shard header it writes.

    Anything in the folder carrying the tag was written by a run with these exact arguments, so
    a resumed run may remove or replace it; anything else is not ours and is never touched.
    """
    return hashlib.sha256(json.dumps(config, sort_keys=True).encode()).hexdigest()[:12]


def temp_name(name: str, tag: str) -> str:
    """Per-process temp name: two processes never write the same temp file."""
    return f"{name}.{tag}.{os.getpid()}.tmp"


def write_manifest(out_dir: Path, manifest: Manifest) -> None:
    """Atomic: a reader or a resumed run sees the old manifest or the new one, never half."""
    out_dir = Path(out_dir)
    tmp = out_dir / temp_name(MANIFEST, cache_tag(manifest.config))
    try:
        with open(tmp, "w") as f:
            f.write(manifest.to_json())
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, out_dir / MANIFEST)
    finally:
        tmp.unlink(missing_ok=True)  # only after a failure (disk full): the temp is ours
    _fsync_dir(out_dir)


def read_manifest(out_dir: Path | str) -> Manifest:
    """The manifest, with every name that becomes a path and every width checked."""
    path = Path(out_dir) / MANIFEST
    if not path.exists():
        raise FileNotFoundError(
            f"{path} not found: not an activation cache (create one with `interp-bench cache`)"
        )
    try:
        manifest = Manifest.from_json(path.read_text())
    except (json.JSONDecodeError, TypeError, KeyError, UnicodeDecodeError) as err:
        raise ShardError(f"{path} is not a valid manifest: {err}") from err
    for h in manifest.hooks:
        if not isinstance(h, dict):
            raise ShardError(f"{path}: hook entry {h!r} is not an object")
        check_hook_name(h.get("short"), path)
        d = h.get("d")
        if not isinstance(d, int) or isinstance(d, bool) or d < 1:
            raise ShardError(
                f"{path}: hook {h['short']} has no valid width `d` (got {d!r}); "
                "the manifest is damaged: re-create the cache with `interp-bench cache`"
            )
    for s in manifest.shards:
        check_shard_file(s.file, path)
        if not (isinstance(s.n_tokens, int) and isinstance(s.bytes, int) and s.n_tokens > 0):
            raise ShardError(f"{path}: shard entry {s.file} has invalid sizes")
    return manifest


def _as_bytes(t: torch.Tensor) -> memoryview:
    t = t.detach().contiguous().cpu()
    if t.dtype == torch.bfloat16:
        t = t.view(torch.int16)
    return memoryview(t.numpy()).cast("B")


def write_shard(
    path: Path, tensors: dict[str, torch.Tensor], tag: str = "untagged"
) -> tuple[str, int]:
    """Write a safetensors file atomically; return (sha256 of the file, size in bytes).

    `tag` (the cache's `cache_tag`) goes into the header's `__metadata__` and the temp name."""
    path = Path(path)
    header: dict[str, dict] = {"__metadata__": {"cache": tag}}
    offset = 0
    # Widest dtypes first keeps every tensor aligned to its element size for memory-mapping.
    order = sorted(tensors, key=lambda k: (-tensors[k].element_size(), k))
    for name in order:
        t = tensors[name]
        n = t.numel() * t.element_size()
        header[name] = {
            "dtype": _TORCH_TO_ST[t.dtype],
            "shape": list(t.shape),
            "data_offsets": [offset, offset + n],
        }
        offset += n
    head = json.dumps(header, separators=(",", ":")).encode()
    head += b" " * (-len(head) % 8)
    prefix = len(head).to_bytes(8, "little") + head
    h = hashlib.sha256(prefix)
    tmp = path.with_name(temp_name(path.name, tag))
    try:
        with open(tmp, "wb") as f:
            f.write(prefix)
            for name in order:
                buf = _as_bytes(tensors[name])
                h.update(buf)
                f.write(buf)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)  # only after a failure (disk full): the temp is ours
    _fsync_dir(path.parent)
    return h.hexdigest(), len(prefix) + offset


def read_header(path: Path) -> tuple[int, dict]:
    """Parse a safetensors header; return (data start offset, {name: entry}). Checks the size."""
    path = Path(path)
    try:
        size = path.stat().st_size
        with open(path, "rb") as f:
            n = int.from_bytes(f.read(8), "little")
            if n <= 0 or 8 + n > size:
                raise ShardError(f"{path}: truncated or not a safetensors file (header length {n})")
            header = json.loads(f.read(n))
    except FileNotFoundError as err:
        raise ShardError(f"{path}: shard file missing") from err
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ShardError(f"{path}: corrupt header ({err})") from err
    if not isinstance(header, dict):
        raise ShardError(f"{path}: corrupt header (not a JSON object)")
    header.pop("__metadata__", None)
    try:
        end = max((int(e["data_offsets"][1]) for e in header.values()), default=0)
        for e in header.values():
            if e["dtype"] not in _ST_DTYPES:
                raise ShardError(f"{path}: tensor dtype {e['dtype']!r} is not one we write")
    except (KeyError, TypeError, IndexError, ValueError) as err:
        if isinstance(err, ShardError):
            raise
        raise ShardError(f"{path}: corrupt header ({err!r})") from err
    if 8 + n + end != size:
        raise ShardError(f"{path}: {size} bytes on disk, header says {8 + n + end} (truncated?)")
    return 8 + n, header


def shard_tag(path: Path) -> str | None:
    """The `cache` tag in a shard's header metadata (None when absent or unreadable)."""
    try:
        with open(path, "rb") as f:
            n = int.from_bytes(f.read(8), "little")
            if not 0 < n <= 1 << 20:
                return None
            meta = json.loads(f.read(n)).get("__metadata__") or {}
    except (OSError, ValueError, AttributeError):
        return None
    tag = meta.get("cache") if isinstance(meta, dict) else None
    return tag if isinstance(tag, str) else None


# Shards whose sha256 this process has checked, by (path, device, inode, size, mtime, sha):
# each shard is hashed once per process, before its first read.
_VERIFIED: set[tuple] = set()
_VERIFY_LOCK = threading.Lock()


def _identity(path: Path, sha256: str) -> tuple:
    st = path.stat()
    return (str(path.resolve()), st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, sha256)


def verify_once(path: Path, sha256: str) -> None:
    """Stream-hash `path` unless this process already checked this very file; ShardError if
    its sha256 is not the manifest's."""
    key = _identity(path, sha256)
    with _VERIFY_LOCK:
        if key in _VERIFIED:
            return
        if sha256_file(path) != sha256:
            raise ShardError(
                f"{path}: sha256 does not match the manifest (the file was changed, corrupted "
                f"or swapped with another shard); run `interp-bench inspect {path.parent}` to "
                "list the damaged shards, then delete the folder and rerun `interp-bench cache`"
            )
        _VERIFIED.add(key)


class ShardView:
    """One shard's tensors: sequential reads into caller-owned buffers (the hot path: plain
    `readinto`, no page faults) and short-lived memory maps for random rows. Holds no open file,
    so a cache may have any number of shards."""

    def __init__(self, path: Path, expected_bytes: int | None = None, sha256: str | None = None):
        self.path = Path(path)
        self.sha256 = sha256  # checked (once per process) before the first read
        if expected_bytes is not None:
            size = self.path.stat().st_size if self.path.exists() else -1
            if size != expected_bytes:
                raise ShardError(
                    f"{self.path}: {size} bytes on disk, manifest says {expected_bytes} "
                    "(truncated or replaced; run `interp-bench inspect` on the cache)"
                )
        self._start, self.header = read_header(self.path)

    def _verified(self) -> None:
        if self.sha256 is not None:
            verify_once(self.path, self.sha256)

    def check(self, info: ShardInfo, widths: dict[str, int]) -> None:
        """The header agrees with the manifest entry: every tensor has `info.n_tokens` rows,
        each hook its width. Header only: no data is read."""
        where = f"{self.path}: header does not match the manifest"
        want = {"tokens": (info.n_tokens,), "seq": (info.n_tokens,), "pos": (info.n_tokens,)}
        want |= {name: (info.n_tokens, d) for name, d in widths.items()}
        for name, shape in want.items():
            if self.shape(name) != shape:
                raise ShardError(
                    f"{where} ({name} is {list(self.shape(name))}, manifest says {list(shape)}); "
                    "the shard was replaced or swapped with another cache's"
                )

    def _entry(self, name: str) -> dict:
        if name not in self.header:
            raise ShardError(f"{self.path}: no tensor {name!r} (has {', '.join(self.header)})")
        return self.header[name]

    def shape(self, name: str) -> tuple[int, ...]:
        return tuple(self._entry(name)["shape"])

    def dtype(self, name: str) -> torch.dtype:
        return _ST_DTYPES[self._entry(name)["dtype"]]

    def array(self, name: str) -> np.ndarray:
        """Memory-mapped numpy view, alive while referenced (bf16 shows as uint16: `to_torch`)."""
        e = self._entry(name)
        self._verified()
        a, b = e["data_offsets"]
        # Copy-on-write mapping: writable views (torch wants them); the file is never modified.
        raw = np.memmap(self.path, dtype=np.uint8, mode="c", offset=self._start + a, shape=b - a)
        return raw.view(_ST_TO_NUMPY[e["dtype"]]).reshape(e["shape"])

    def read_into(self, name: str, dst: torch.Tensor) -> None:
        """Read a whole tensor into contiguous `dst` (same dtype and shape) with one `readinto`."""
        e = self._entry(name)
        self._verified()
        a, b = e["data_offsets"]
        if (
            not dst.is_contiguous()
            or dst.dtype != self.dtype(name)
            or list(dst.shape) != e["shape"]
        ):
            raise ValueError(f"{self.path}: {name} does not fit the given buffer")
        buf = memoryview(dst.view(-1).view(torch.uint8).numpy())
        with open(self.path, "rb", buffering=0) as f:
            f.seek(self._start + a)
            done = 0
            while done < b - a:
                n = f.readinto(buf[done:])
                if not n:
                    raise ShardError(f"{self.path}: ends inside tensor {name} (truncated)")
                done += n


def to_torch(arr: np.ndarray, dtype: torch.dtype) -> torch.Tensor:
    """A numpy array (uint16 for bf16) as a torch tensor of the stored dtype, no copy."""
    t = torch.from_numpy(arr)
    if dtype == torch.bfloat16:
        t = t.view(torch.bfloat16)
    return t


def sha256_file(path: Path, chunk: int = 1 << 23) -> str:
    """Streamed through one reused buffer: no allocation per block, bounded memory."""
    h = hashlib.sha256()
    buf = bytearray(chunk)
    view = memoryview(buf)
    with open(path, "rb", buffering=0) as f:
        while n := f.readinto(buf):
            h.update(view[:n])
    return h.hexdigest()


def verify(out_dir: Path | str) -> list[str]:
    """Check every listed shard's size and sha256; return one problem line per bad shard."""
    out_dir = Path(out_dir)
    manifest = read_manifest(out_dir)
    problems: list[str] = []
    for s in manifest.shards:
        path = out_dir / s.file
        if not path.exists():
            problems.append(f"{s.file}: missing")
            continue
        size = path.stat().st_size
        if size != s.bytes:
            problems.append(f"{s.file}: {size} bytes on disk, manifest says {s.bytes} (truncated?)")
            continue
        if sha256_file(path) != s.sha256:
            problems.append(f"{s.file}: sha256 mismatch (corrupt)")
    return problems
