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


WEIGHTS_DIGEST_VERSION = 2  # 2: a checksum reduced where the weights are, never copied whole (1: sha256 of a CPU copy)
_CHUNK_WORDS = 1 << 22  # 16 MiB of weights per step: the temporaries stay small beside any model


def weights_fingerprint(module: torch.nn.Module) -> str:
    """The identity of a model built or loaded in memory (a random-weight test model, a user's model on a GPU):
    sha256 over each parameter and buffer's name, dtype, shape and a checksum of its bytes.

    The checksum is reduced on the tensor's own device in 16 MiB steps and only two integers per tensor come
    back: a model on a GPU is never copied to the CPU (a sha256 moves every byte to the host, which for an 8B
    model is 16 GB of transfer and a second copy), and on the CPU no second copy of the weights is made. Each 32-bit word enters a
    plain sum and a sum weighted by its place, both modulo 2**64: any change of one word, and any exchange of two
    words, changes the fingerprint. The trade-offs: unlike sha256 it is not collision-resistant against weights
    crafted to collide (it identifies weights, it does not authenticate them), and on a CPU it reads the bytes
    a few times where sha256 reads them once. Integer sums do not depend on the order of the reduction, so the
    same weights give the same fingerprint on every device.
    """
    digest = hashlib.sha256(f"weights-v{WEIGHTS_DIGEST_VERSION}".encode())
    with torch.no_grad():
        for name, t in sorted(module.state_dict().items()):
            plain, weighted = _word_sums(t.detach())
            digest.update(f"{name}|{t.dtype}|{list(t.shape)}|{plain}|{weighted}\n".encode())
    return digest.hexdigest()


_MULTIPLIERS: dict[str, torch.Tensor] = {}


def _multipliers(device: torch.device) -> torch.Tensor:
    """Knuth's multiplicative hash of each place in a step, below 2**31, made once per device."""
    key = str(device)
    if key not in _MULTIPLIERS:
        place = torch.arange(_CHUNK_WORDS, dtype=torch.int64, device=device)
        _MULTIPLIERS[key] = (place * 2654435761 + 1) & 0x7FFFFFFF
    return _MULTIPLIERS[key]


def _word_sums(t: torch.Tensor) -> tuple[int, int]:
    """(sum of words, position-weighted sum of words) mod 2**64 over the tensor's bytes read as 32-bit words
    (the last partial word zero-padded), computed on the tensor's device."""
    raw = t.contiguous().reshape(-1).view(torch.uint8) if t.numel() else torch.zeros(0, dtype=torch.uint8, device=t.device)
    whole = raw.numel() // 4 * 4
    words = raw[:whole].view(torch.int32)
    if whole < raw.numel():  # a tensor of 1-byte or 2-byte elements whose size is not a multiple of 4 bytes
        tail = torch.zeros(4, dtype=torch.uint8, device=t.device)
        tail[: raw.numel() - whole] = raw[whole:]
        words = torch.cat([words, tail.view(torch.int32)])
    multiplier = _multipliers(t.device)
    plain = weighted = torch.zeros((), dtype=torch.int64, device=t.device)
    for step, start in enumerate(range(0, words.numel(), _CHUNK_WORDS)):
        w = words[start:start + _CHUNK_WORDS].to(torch.int64) & 0xFFFFFFFF  # the word as an unsigned value
        plain = plain + w.sum()
        # a word's weight: a multiplier of its place in the step (< 2**31, so each product < 2**63) times the
        # step's number; the sums wrap modulo 2**64
        weighted = weighted + (step + 1) * (w * multiplier[: w.numel()]).sum()
    return int(plain.item()), int(weighted.item())
