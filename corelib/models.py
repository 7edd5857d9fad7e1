"""Load a causal LM as a backbone for attention re-ranking.

Built-in names resolve to GGUF files that PyPI wheels ship (so the study runs offline);
anything else is a hub id or local directory. Only the decoder backbone is kept: attention
re-ranking never needs the LM head.
"""

from __future__ import annotations

import copy
import logging
import os
from dataclasses import dataclass, field, replace
from pathlib import Path

import torch

from .catalogue import BUILTIN_MODELS, CONVERTER_VERSION, DEFAULT_MODEL, PAPER_CHAT_MARKERS, ModelLoadError
from .errors import UsageError
from .fingerprints import directory_fingerprint, hub_commit, weights_fingerprint
from .gguf_weights import converted_dir, gguf_path

log = logging.getLogger(__name__)


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
    spec: "ModelSpec | None" = field(default=None, repr=False, compare=False)  # what it was loaded from

    @property
    def device(self) -> torch.device:
        return next(self.backbone.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.backbone.parameters()).dtype

    @property
    def num_total_heads(self) -> int:
        return self.num_layers * self.num_heads


# ----------------------------------------------------------------------------- identity


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

    @property
    def max_positions(self) -> int | None:
        """The positions the model takes (a built-in's from its catalogue entry: nothing converted or loaded)."""
        if self.name in BUILTIN_MODELS:
            return BUILTIN_MODELS[self.name].positions
        return getattr(self.config(), "max_position_embeddings", None)

    def config(self):
        """The model's (text) config, read without loading weights (an in-memory model's own)."""
        from transformers import AutoConfig

        if self.fingerprint.startswith("memory:") and self._loaded is not None:
            return self._loaded.backbone.config
        source = str(converted_dir(self.name)) if self.name in BUILTIN_MODELS else self.name
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
        spec.loaded_layers = check_num_layers(num_layers, spec.num_layers, "the model's decoder layers")
    return spec


def check_num_layers(num_layers: int | None, available: int, what: str) -> int:
    """``num_layers`` (None = all of them) if it is within 1..available, else a UsageError naming ``what`` they are."""
    num_layers = available if num_layers is None else num_layers
    if not 1 <= num_layers <= available:
        raise UsageError(f"num_layers={num_layers} is outside 1..{available}, {what}")
    return num_layers


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
        commit = hub_commit(name_or_path, revision)
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


def dtype_name(dtype) -> str:
    """The name a dtype is stored and printed under ("float32", "bfloat16"): part of every record's and needle
    trial's key, and the dtype column of the study's tables."""
    return str(dtype).removeprefix("torch.")


def _resolve_dtype(dtype, device: str) -> torch.dtype:
    if dtype is None:
        return torch.bfloat16 if device.startswith("cuda") and torch.cuda.is_bf16_supported() else torch.float32
    if isinstance(dtype, str):
        try:
            return {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16,
                    "bf16": torch.bfloat16, "float16": torch.float16, "fp16": torch.float16}[dtype]
        except KeyError:
            raise UsageError(f"unknown dtype {dtype!r}: use float32, bfloat16 or float16") from None
    return dtype


def _truncated_config(config, num_layers: int | None):
    total = config.num_hidden_layers
    if num_layers is None:
        return config, total
    config.num_hidden_layers = check_num_layers(num_layers, total, "the model's decoder layers")
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

    spec = spec or model_spec(name_or_path, dtype=dtype, device=device, revision=revision, num_layers=num_layers)
    device, torch_dtype = spec.device, spec.dtype
    source = str(converted_dir(spec.name, verify=True)) if spec.name in BUILTIN_MODELS else spec.name
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
    lm = LoadedModel(
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
        spec=spec,
    )
    if spec.available_layers == lm.num_layers:
        spec._loaded = lm  # spec.load() returns this model from now on
    return lm


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


def from_modules(backbone, tokenizer, model_id: str, total_layers: int | None = None) -> LoadedModel:
    """Wrap an already built backbone (e.g. a random-weight test model) in a LoadedModel, with a ModelSpec
    whose ``load()`` returns it."""
    config = backbone.config
    prefix, suffix = chat_markers(tokenizer, model_id)
    backbone.eval()
    total = total_layers or config.num_hidden_layers
    fingerprint = f"memory:{weights_fingerprint(backbone)}:{type(tokenizer).__name__}:{len(tokenizer)}"
    lm = LoadedModel(
        backbone=backbone,
        tokenizer=tokenizer,
        model_id=model_id,
        num_layers=config.num_hidden_layers,
        total_layers=total,
        num_heads=config.num_attention_heads,
        num_kv_heads=getattr(config, "num_key_value_heads", None) or config.num_attention_heads,
        prefix=prefix,
        suffix=suffix,
        max_positions=getattr(config, "max_position_embeddings", None),
        fingerprint=fingerprint,
    )
    param = next(backbone.parameters())
    lm.spec = ModelSpec(model_id, model_id, fingerprint, total, config.num_attention_heads, param.dtype,
                        param.device.type, loaded_layers=None if config.num_hidden_layers == total else config.num_hidden_layers,
                        _loaded=lm)
    return lm


def as_spec(model: "ModelSpec | LoadedModel") -> ModelSpec:
    """The identity every function works from: a ModelSpec as it is, a loaded model's own spec. Accepting
    both here is what lets every other signature take one type."""
    if isinstance(model, ModelSpec):
        return model
    if isinstance(model, LoadedModel) and model.spec is not None:
        # a loaded model is what its spec loads; a copy made with other settings gets a spec of its own
        return model.spec if model.spec._loaded is model else replace(model.spec, _loaded=model)
    raise ModelLoadError(f"{type(model).__name__} is not a model: give a ModelSpec (model_spec) or a loaded model "
                         "(load_model, from_modules)")
