import pytest
import torch

from corelib.attention import calibrated_head_token_scores, head_token_scores
from corelib.prompts import CONTENT_FREE_QUERY, Document, build_prompt, document_text
from tiny_models import CONFIGS, tiny_model

DOCS = [Document(f"d{i}", document_text(f"Title {i}", f"paragraph {i} about the colour of the sky and water. " * 4, 100))
        for i in range(4)]


def eager_oracle(lm, prompt):
    """transformers' own attention probabilities (eager, output_attentions), query rows averaged."""
    lm.backbone.set_attn_implementation("eager")
    try:
        with torch.no_grad():
            out = lm.backbone(input_ids=torch.tensor([prompt.input_ids]), output_attentions=True)
    finally:
        lm.backbone.set_attn_implementation("sdpa")
    s, e = prompt.query_span
    return torch.stack([a[0, :, s:e].float().mean(1) for a in out.attentions])


@pytest.mark.parametrize("arch", sorted(CONFIGS))
def test_matches_eager_output_attentions(arch, tokenizer):
    lm = tiny_model(arch, tokenizer)
    prompt = build_prompt(tokenizer, "why is the sky blue?", DOCS, lm.prefix, lm.suffix)
    if arch == "gemma3":
        assert len(prompt.input_ids) > 24 * 4  # well past the sliding window
    ours = head_token_scores(lm, prompt.input_ids, prompt.query_span)
    ref = eager_oracle(lm, prompt)
    assert ours.shape == ref.shape == (4, 4, len(prompt.input_ids))
    assert (ours - ref).abs().max() < 1e-5
    assert torch.allclose(ours.sum(-1), torch.ones(4, 4), atol=1e-5)  # rows are distributions
    assert ours.std() > 1e-4  # not uniform: the test would catch a wrong mask


@pytest.mark.parametrize("arch", sorted(CONFIGS))
def test_calibration_reuses_prefix_exactly(arch, tokenizer):
    lm = tiny_model(arch, tokenizer)
    q = build_prompt(tokenizer, "why is the sky blue?", DOCS, lm.prefix, lm.suffix)
    na = build_prompt(tokenizer, CONTENT_FREE_QUERY, DOCS, lm.prefix, lm.suffix)
    s_q, s_na = calibrated_head_token_scores(lm, q.input_ids, q.query_span, na.input_ids, na.query_span)
    assert (s_q - head_token_scores(lm, q.input_ids, q.query_span)).abs().max() < 1e-5
    assert (s_na - head_token_scores(lm, na.input_ids, na.query_span)).abs().max() < 1e-5


def test_default_model_matches_eager(default_lm):
    prompt = build_prompt(default_lm.tokenizer, "why is the sky blue?", DOCS, default_lm.prefix, default_lm.suffix)
    ours = head_token_scores(default_lm, prompt.input_ids, prompt.query_span)
    assert (ours - eager_oracle(default_lm, prompt)).abs().max() < 1e-5


def test_early_exit_and_pruned_model_keep_scores(default_lm):
    from corelib.models import load_model

    prompt = build_prompt(default_lm.tokenizer, "why is the sky blue?", DOCS, default_lm.prefix, default_lm.suffix)
    full = head_token_scores(default_lm, prompt.input_ids, prompt.query_span)
    early = head_token_scores(default_lm, prompt.input_ids, prompt.query_span, num_layers=10)
    pruned = load_model("smollm2-135m", num_layers=15)
    cut = head_token_scores(pruned, prompt.input_ids, prompt.query_span)
    assert early.shape[0] == 10 and cut.shape[0] == 15
    assert torch.equal(early, full[:10])
    assert (cut - full[:15]).abs().max() < 1e-6


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_precision_gives_finite_scores(dtype, tokenizer):
    lm = tiny_model("llama", tokenizer, dtype=dtype)
    # large q/k values: an unscaled fp16 q.k would overflow to inf
    for name, p in lm.backbone.named_parameters():
        if "q_proj" in name or "k_proj" in name:
            p.data.mul_(30.0)
    prompt = build_prompt(tokenizer, "why is the sky blue?", DOCS)
    try:
        s = head_token_scores(lm, prompt.input_ids, prompt.query_span)
    except RuntimeError as err:  # an op this CPU build lacks for the dtype
        pytest.skip(f"{dtype} does not run on this CPU: {err}")
    assert torch.isfinite(s).all() and s.dtype == torch.float32
    assert torch.allclose(s.sum(-1), torch.ones_like(s.sum(-1)), atol=1e-3)


@pytest.mark.parametrize("arch", sorted(CONFIGS))
def test_packed_calibration_equals_a_prefix_cache(arch, tokenizer):
    """The calibration packs both suffixes after the prefix in one forward (no KV cache: memory);
    it must give what running each suffix on a copy of the prefix's KV cache gives (the records
    of both ways mix in one cache). gemma3: the prompt runs well past its 24-token sliding window."""
    import copy

    from transformers import DynamicCache

    from corelib.attention import _Capture, _run, _stack

    lm = tiny_model(arch, tokenizer)
    docs = [Document(f"{d.doc_id}-{i}", d.text) for i in range(3) for d in DOCS]
    q = build_prompt(tokenizer, "why is the sky blue?", docs, lm.prefix, lm.suffix)
    na = build_prompt(tokenizer, CONTENT_FREE_QUERY, docs, lm.prefix, lm.suffix)
    s_q, s_na = calibrated_head_token_scores(lm, q.input_ids, q.query_span, na.input_ids, na.query_span)
    prefix = q.query_span[0]
    cache = DynamicCache(config=lm.backbone.config)
    with torch.inference_mode():
        _run(lm, q.input_ids[:prefix], _Capture(None, 0, 3), cache)
        ref = []
        for ids, (s, e) in ((q.input_ids, q.query_span), (na.input_ids, na.query_span)):
            cap = _Capture((s - prefix, e - prefix), prefix, 3)
            _run(lm, ids[prefix:e], cap, copy.deepcopy(cache))
            ref.append(_stack(cap, 4, e, lm.num_heads))
    assert (s_q - ref[0]).abs().max() < 1e-6 and (s_na - ref[1]).abs().max() < 1e-6
    assert s_q.std() > 1e-4 and s_na.std() > 1e-4  # not a uniform (wrongly masked) attention


def test_calibration_is_one_forward_without_a_cache(tokenizer, monkeypatch):
    """Memory: the calibrated record runs one backbone forward and keeps no KV cache
    (the prefix cache cost 1.5x a plain forward's memory for smollm2-135m at 8k tokens)."""
    lm = tiny_model("llama", tokenizer)
    q = build_prompt(tokenizer, "why is the sky blue?", DOCS, lm.prefix, lm.suffix)
    na = build_prompt(tokenizer, CONTENT_FREE_QUERY, DOCS, lm.prefix, lm.suffix)
    calls = []
    forward = lm.backbone.forward
    monkeypatch.setattr(lm.backbone, "forward", lambda *a, **k: calls.append(k) or forward(*a, **k))
    calibrated_head_token_scores(lm, q.input_ids, q.query_span, na.input_ids, na.query_span)
    assert len(calls) == 1 and calls[0]["use_cache"] is False
    prefix = q.query_span[0]
    assert calls[0]["input_ids"].shape[1] == q.query_span[1] + na.query_span[1] - prefix


def test_a_users_model_keeps_its_attention_implementation(tokenizer):
    """The extraction switches the backbone to its registered attention for the forward only."""
    from corelib.attention import current_attention

    lm = tiny_model("llama", tokenizer, attn="eager")
    q = build_prompt(tokenizer, "why is the sky blue?", DOCS, lm.prefix, lm.suffix)
    head_token_scores(lm, q.input_ids, q.query_span)
    assert current_attention(lm.backbone) == "eager"  # otherwise: left on corelib_sdpa for good
    assert lm.backbone.layers[0].self_attn.config._attn_implementation == "eager"


def test_the_one_private_transformers_attribute_read_is_there():
    """If a transformers release moves it, this names it (requirements.txt pins the tested release)."""
    import transformers

    from corelib.attention import ATTN_ATTRIBUTE

    config = transformers.LlamaConfig()
    assert hasattr(config, ATTN_ATTRIBUTE), (f"transformers {transformers.__version__} moved config.{ATTN_ATTRIBUTE}, "
                                             "which corelib.attention reads")
