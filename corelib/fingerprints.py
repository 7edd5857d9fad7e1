"""What identifies a model's weights without loading them: file and directory digests, the hub commit, and
a digest of weights already in memory."""

from __future__ import annotations

import hashlib
import logging
import os
import tempfile
from pathlib import Path

import torch

from .catalogue import ModelLoadError
from .storage import cache_root, publish

log = logging.getLogger(__name__)


_HASHED_THIS_PROCESS: dict[tuple[str, int], str] = {}


def file_sha256(path: Path, trust_mtime: bool = True) -> str:
    """sha256 of a file, remembered per (path, size, mtime) so large weights are hashed once. ``trust_mtime=False``
    reads the whole file once per process whatever its time says (bytes damaged in place, with the time restored
    as bit rot or a copy tool leaves it, keep size and time): about a second per 500 MB."""
    stat = path.stat()
    if not trust_mtime:
        key = (str(path.resolve()), stat.st_mtime_ns)
        if key not in _HASHED_THIS_PROCESS:
            _HASHED_THIS_PROCESS[key] = _read_sha256(path)
        return _HASHED_THIS_PROCESS[key]
    memo_dir = cache_root() / "fingerprints"
    memo = memo_dir / (hashlib.sha256(f"{path.resolve()}|{stat.st_size}|{stat.st_mtime_ns}".encode()).hexdigest()[:32])
    if memo.is_file():
        return memo.read_text().strip()
    hexdigest = _read_sha256(path)
    memo_dir.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=memo_dir, suffix=".tmp")
    with os.fdopen(fd, "w") as out:
        out.write(hexdigest)
    publish(tmp, memo)
    return hexdigest


def _read_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while block := f.read(1 << 22):
            digest.update(block)
    return digest.hexdigest()


def directory_fingerprint(path: str | os.PathLike) -> str:
    """sha256 over the names and contents of every file of a model directory (weights, config,
    tokenizer): two checkpoints share it only when they are the same files."""
    root = Path(path)
    digest = hashlib.sha256()
    files = sorted(p for p in root.rglob("*") if p.is_file() and not any(x.startswith(".") for x in p.relative_to(root).parts))
    if not files:
        raise ModelLoadError(f"{root} holds no files: give a model directory (config.json, weights, tokenizer)")
    for f in files:
        digest.update(f"{f.relative_to(root)}\0{file_sha256(f)}\n".encode())
    return digest.hexdigest()


def hub_commit(repo_id: str, revision: str | None) -> str:
    """The commit a hub id resolves to: asked of the hub when online, else read from the local hub cache."""
    if revision and len(revision) == 40 and all(c in "0123456789abcdef" for c in revision):
        return revision
    offline = os.environ.get("HF_HUB_OFFLINE") or os.environ.get("TRANSFORMERS_OFFLINE")
    if not offline:
        try:
            from huggingface_hub import HfApi

            return HfApi().model_info(repo_id, revision=revision).sha
        except Exception as err:  # unreachable hub, gated repo: try the local cache
            log.info("could not ask the hub for %s (%s); looking in the local cache", repo_id, type(err).__name__)
    from huggingface_hub import try_to_load_from_cache

    cached = try_to_load_from_cache(repo_id, "config.json", revision=revision)
    if isinstance(cached, str):
        return Path(cached).parent.name  # .../snapshots/<commit>/config.json
    hint = ("the hub is unreachable (offline): download it where you are online, or pass a local directory"
            if offline else "check the id, and log in with `hf auth login` for gated models")
    raise ModelLoadError(f"could not load {repo_id!r} from the hub: {hint}")


def weights_fingerprint(module: torch.nn.Module) -> str:
    """sha256 of a module's parameters and buffers (names, shapes, bytes): the identity of a model
    built in memory (e.g. a random-weight test model)."""
    digest = hashlib.sha256()
    for name, t in sorted(module.state_dict().items()):
        t = t.detach().cpu().contiguous()
        digest.update(f"{name}|{t.dtype}|{list(t.shape)}".encode())
        digest.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return digest.hexdigest()
