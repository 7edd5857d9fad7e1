"""``make bench-gpu``: one short run that checks half-precision extraction on CUDA and times it.

For each model (tiny random-weight models of the paper's architectures, and a random-weight model
with the default model's shape, so that no weights need to travel to the GPU machine):

- bf16 and fp16 extraction against fp32 on the same prompt: the largest attention difference and
  the Kendall tau of the document scores (ICR), which must be >= 0.9;
- time of a plain forward, all-head extraction, extraction with N/A calibration, and extraction on
  the model pruned by 50%, as ratios to the plain forward (median of ``repeats``).

On a machine without CUDA it runs the same code on the CPU (bf16 only), which is how it is tested.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

import torch

TINY = dict(hidden_size=64, intermediate_size=96, num_hidden_layers=4, num_attention_heads=4, num_key_value_heads=2,
            max_position_embeddings=8192)


def _configs(vocab: int) -> dict:
    from transformers import Gemma3TextConfig, LlamaConfig, MistralConfig, Qwen2Config

    return {
        "tiny-llama": LlamaConfig(vocab_size=vocab, **TINY),
        "tiny-mistral": MistralConfig(vocab_size=vocab, sliding_window=None, **TINY),
        "tiny-qwen2": Qwen2Config(vocab_size=vocab, **TINY),
        "tiny-gemma3": Gemma3TextConfig(vocab_size=vocab, head_dim=16, sliding_window=24, query_pre_attn_scalar=24,
                                        layer_types=["sliding_attention", "full_attention"] * 2, **TINY),
        # SmolLM2-135M's shape (30 layers x 9 heads, 3 KV heads), random weights
        "smollm2-135m-shape": LlamaConfig(vocab_size=vocab, hidden_size=576, intermediate_size=1536, num_hidden_layers=30,
                                          num_attention_heads=9, num_key_value_heads=3, max_position_embeddings=8192,
                                          tie_word_embeddings=True),
    }


def _model(name: str, config, tokenizer, dtype, device):
    from transformers import AutoModel

    from ..models import from_modules

    torch.manual_seed(0)
    config._attn_implementation = "sdpa"
    backbone = AutoModel.from_config(config, dtype=torch.float32)
    for pname, p in backbone.named_parameters():  # random weights attend near-uniformly: sharpen q and k
        if "q_proj" in pname or "k_proj" in pname:
            p.data.mul_(4.0 if name.startswith("tiny") else 2.0)
    backbone = backbone.to(device=device, dtype=dtype)
    return from_modules(backbone, tokenizer, name)


def _prompt(tokenizer, lm, tokens: int):
    from ..prompts import CONTENT_FREE_QUERY, Document, build_prompt

    words = "the colour of the sky over water at dusk is a matter of scattering and absorption".split()
    docs, n = [], 0
    while True:
        text = " ".join(words[(n + i) % len(words)] for i in range(60))
        docs.append(Document(f"d{n}", f"Paragraph {n}\n{text}"))
        p = build_prompt(tokenizer, "why is the sky blue?", docs, lm.prefix, lm.suffix)
        if len(p.input_ids) > tokens:
            docs.pop()
            break
        n += 1
    return (build_prompt(tokenizer, "why is the sky blue?", docs, lm.prefix, lm.suffix),
            build_prompt(tokenizer, CONTENT_FREE_QUERY, docs, lm.prefix, lm.suffix))


def _doc_scores(lm, prompt, na):
    from ..attention import calibrated_head_token_scores
    from ..scoring import filtered_doc_sum

    s_q, s_na = calibrated_head_token_scores(lm, prompt.input_ids, prompt.query_span, na.input_ids, na.query_span)
    idx = torch.cat([torch.arange(s, e) for s, e in prompt.doc_spans])
    bounds = torch.tensor([0] + [e - s for s, e in prompt.doc_spans]).cumsum(0)
    c = (s_q[..., idx] - s_na[..., idx]).sum((0, 1))
    return s_q, filtered_doc_sum(c, bounds)


def _timed(fn, repeats: int, cuda: bool) -> float:
    """Median of ``repeats`` timings after a warm-up."""
    from .bench import timed

    timed(fn, cuda)
    return statistics.median(timed(fn, cuda) for _ in range(repeats))


def check(models=None, tokens: int = 2000, repeats: int = 3, device: str | None = None) -> list[dict]:
    from scipy.stats import kendalltau

    from ..attention import head_token_scores
    from ..models import load_model

    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    cuda = device.startswith("cuda")
    tokenizer = load_model("smollm2-135m", num_layers=1, device="cpu").tokenizer
    half = [torch.bfloat16, torch.float16] if cuda else [torch.bfloat16]
    rows = []
    for name, config in _configs(len(tokenizer)).items():
        if models and name not in models:
            continue
        ref = _model(name, config, tokenizer, torch.float32, device)
        prompt, na = _prompt(tokenizer, ref, tokens if not name.startswith("tiny") else 400)
        with torch.inference_mode():
            att32, doc32 = _doc_scores(ref, prompt, na)
        for dtype in half:
            lm = _model(name, config, tokenizer, dtype, device)
            with torch.inference_mode():
                att, doc = _doc_scores(lm, prompt, na)
            tau = kendalltau(doc32.numpy(), doc.numpy()).statistic
            row = {"model": name, "dtype": str(dtype).removeprefix("torch."), "device": device,
                   "tokens": len(prompt.input_ids), "max attention error": float((att - att32).abs().max()),
                   "finite": bool(torch.isfinite(att).all()), "kendall tau (document scores)": float(tau),
                   "verdict": "ok" if tau >= 0.9 and torch.isfinite(att).all() else "FAILED"}
            ids = torch.tensor([prompt.input_ids], device=device)
            half_layers = max(1, config.num_hidden_layers // 2)
            with torch.inference_mode():
                t_plain = _timed(lambda: lm.backbone(input_ids=ids, use_cache=False), repeats, cuda)
                t_b = _timed(lambda: head_token_scores(lm, prompt.input_ids, prompt.query_span), repeats, cuda)
                t_c = _timed(lambda: _doc_scores(lm, prompt, na), repeats, cuda)
                t_e = _timed(lambda: head_token_scores(lm, prompt.input_ids, prompt.query_span, half_layers), repeats, cuda)
            row.update({"plain forward s": t_plain, "extraction / plain": t_b / t_plain,
                        "calibrated / plain": t_c / t_plain, "50% pruned / plain": t_e / t_plain})
            rows.append(row)
            print(json.dumps(row), flush=True)
    return rows


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", nargs="+", default=None)
    ap.add_argument("--tokens", type=int, default=2000)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--device", default=None)
    ap.add_argument("--out", default=None, help="write the rows as JSON here")
    args = ap.parse_args(argv)
    rows = check(args.models, args.tokens, args.repeats, args.device)
    if args.out:
        Path(args.out).write_text(json.dumps({"command": "python -m corelib.study.gpu_check " + " ".join(sys.argv[1:]),
                                              "rows": rows}, indent=1))
    return 0 if all(r["verdict"] == "ok" for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
