"""Tiny random-weight models of each architecture the paper uses, built from configs."""

import torch
from transformers import (
    AutoModel,
    Gemma3TextConfig,
    GraniteConfig,
    LlamaConfig,
    MistralConfig,
    Phi3Config,
    Qwen2Config,
)

COMMON = dict(hidden_size=64, intermediate_size=96, num_hidden_layers=4, num_attention_heads=4,
              num_key_value_heads=2, max_position_embeddings=4096)

CONFIGS = {
    "llama": lambda v: LlamaConfig(vocab_size=v, **COMMON),
    "mistral": lambda v: MistralConfig(vocab_size=v, sliding_window=None, **COMMON),
    "qwen2": lambda v: Qwen2Config(vocab_size=v, **COMMON),
    "phi3": lambda v: Phi3Config(vocab_size=v, pad_token_id=0, bos_token_id=1, eos_token_id=2, **COMMON),
    "gemma3": lambda v: Gemma3TextConfig(vocab_size=v, head_dim=16, sliding_window=24, query_pre_attn_scalar=24,
                                         layer_types=["sliding_attention", "full_attention"] * 2, **COMMON),
    "granite": lambda v: GraniteConfig(vocab_size=v, attention_multiplier=0.2, **COMMON),
}


def tiny_model(arch: str, tokenizer, attn: str = "sdpa", dtype=torch.float32, seed: int = 0):
    from corelib.models import from_modules

    torch.manual_seed(seed)
    config = CONFIGS[arch](len(tokenizer))
    config._attn_implementation = attn
    model = AutoModel.from_config(config, dtype=dtype)
    # random weights give near-uniform attention; sharpen q/k so the test sees real structure
    for name, p in model.named_parameters():
        if "q_proj" in name or "k_proj" in name or "qkv_proj" in name:
            p.data.mul_(8.0)
    return from_modules(model, tokenizer, f"tiny-{arch}")
