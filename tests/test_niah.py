import pytest
import torch

from corelib.attention import new_cache, prefill, step_attention
from corelib.niah import (NEEDLES, Needle, NeedleTrial, NiahError, TrialResult, TrialStore, build_niah_prompt,
                          copy_hits, niah_scores, rouge1_recall, run_trial, run_trials, trial_grid, trial_status)
from tiny_models import CONFIGS, tiny_model

HAYSTACK = " ".join(f"Sentence number {i} says that libraries index documents by subject." for i in range(400))


@pytest.mark.parametrize("arch", sorted(CONFIGS))
def test_decode_step_attention_equals_eager(arch, tokenizer):
    """Each decoding step's attention row (KV cache, one row per head) is eager attention's row."""
    lm = tiny_model(arch, tokenizer)
    ids = tokenizer(HAYSTACK[:600], add_special_tokens=False)["input_ids"][:90]  # gemma3: past its 24-token window
    p = 80
    lm.backbone.set_attn_implementation("eager")
    with torch.no_grad():
        ref = lm.backbone(input_ids=torch.tensor([ids]), output_attentions=True).attentions
    lm.backbone.set_attn_implementation("sdpa")
    cache = new_cache(lm)
    prefill(lm, ids[: p - 1], cache)
    for t in range(p - 1, len(ids)):
        hidden, rows = step_attention(lm, ids[t], cache, t)
        expected = torch.stack([a[0, :, t, : t + 1] for a in ref]).float()
        assert rows.shape == expected.shape == (4, 4, t + 1)
        assert (rows - expected).abs().max() < 1e-5
    assert rows.std() > 1e-3


def test_copy_rule_on_a_hand_made_step():
    """Only a head whose top position is inside the needle and holds the generated token scores 1/|needle|."""
    needle_ids = torch.tensor([50, 51, 52, 53])  # the needle sits at positions 10..13
    rows = torch.full((2, 3, 20), 0.01)
    rows[0, 0, 11] = 0.9  # copies: position 11 holds 51
    rows[0, 1, 12] = 0.9  # in the needle, but holds 52
    rows[1, 2, 3] = 0.9  # outside the needle
    rows[1, 0, 11] = 0.9  # copies too
    hits = copy_hits(rows, needle_ids, (10, 14), token=51)
    expected = torch.zeros(2, 3)
    expected[0, 0] = expected[1, 0] = 0.25
    assert torch.equal(hits, expected)


def test_prompt_places_the_needle(tokenizer):
    needle = NEEDLES[0]
    for depth in (0.0, 0.5, 1.0):
        trial = NeedleTrial(needle, 300, depth)
        p = build_niah_prompt(tokenizer, HAYSTACK, trial, "<|im_start|>user\n", "<|im_end|>\n<|im_start|>assistant\n")
        s, e = p.needle_span
        assert tokenizer.decode(p.input_ids[s:e]).strip() == needle.text
        share = s / len(p.input_ids)
        assert {0.0: share < 0.1, 0.5: 0.3 < share < 0.7, 1.0: share > 0.8}[depth]
        assert 300 <= len(p.input_ids) <= 300 + 80  # the context, the instruction and the question
    with pytest.raises(ValueError, match="fewer than"):
        build_niah_prompt(tokenizer, "A short haystack.", NeedleTrial(needle, 300, 0.5))
    with pytest.raises(ValueError, match="outside"):
        trial_grid(NEEDLES, [500], [1.5])


def test_rouge1_recall():
    assert rouge1_recall("The cat sat on the mat.", "the cat sat on the MAT") == 1.0
    assert rouge1_recall("the cat sat", "a dog sat") == pytest.approx(1 / 3)


def _result(hits, mass, recall):
    return TrialResult(torch.tensor(hits), torch.tensor(mass), "answer", recall, 5, 100)


def test_scores_count_retrieved_trials_and_break_ties_by_needle_attention():
    counted = _result([[0.0, 0.5], [0.0, 0.0]], [[0.1, 0.2], [0.3, 0.05]], recall=0.8)
    missed = _result([[1.0, 0.0], [0.0, 0.0]], [[0.9, 0.0], [0.0, 0.0]], recall=0.2)
    s = niah_scores([counted, missed], model_id="m")
    assert s.provenance["counted"] == 1 and s.provenance["heads above 0"] == 1
    # (0, 1) copies; among the zero-score heads the needle attention decides, not the layer index
    assert s.order() == [(0, 1), (1, 0), (0, 0), (1, 1)]
    with pytest.raises(NiahError, match="retrieved none"):
        niah_scores([missed], model_id="m")


def test_trials_run_and_are_cached(tokenizer, tmp_path):
    lm = tiny_model("llama", tokenizer)
    head = torch.randn(len(tokenizer), 64)
    trials = trial_grid(NEEDLES[:1], [120], [0.0, 1.0])
    store = TrialStore(tmp_path)
    before = trial_status(lm, trials, HAYSTACK, store=store, max_new_tokens=6)
    assert before.missing == trials and before.estimate_s is None  # nothing cached, nothing timed
    first = run_trials(lm, trials, HAYSTACK, lm_head=head, store=store, max_new_tokens=6)
    after = trial_status(lm, trials, HAYSTACK, store=store, max_new_tokens=6)
    assert after.missing == [] and sorted(after.seconds) == sorted(r.seconds for r in first) and after.estimate_s == 0
    assert len(trial_status(lm, trials, HAYSTACK, store=store).missing) == 2  # another decode budget: other trials
    assert [r.steps for r in first] == [6, 6] and first[0].hits.shape == (4, 4)
    assert all(0.0 < float(r.needle_mass.sum()) for r in first)
    again = run_trials(lm, trials, HAYSTACK, lm_head=torch.zeros(1), store=store, max_new_tokens=6)  # no decoding
    assert all(torch.equal(a.hits, b.hits) and a.answer == b.answer for a, b in zip(first, again))
    other = NeedleTrial(Needle("Another fact is here.", "Which fact?"), 120, 0.0)
    assert store.get(lm.model_id, {"format": 0}) is None and len(list(tmp_path.rglob("*.safetensors"))) == 2
    with pytest.raises(ValueError, match="at least one"):
        run_trial(lm, head, build_niah_prompt(tokenizer, HAYSTACK, other), other.needle.text, 0)


def test_output_embeddings_tied_model_uses_its_embeddings(default_lm):
    from corelib.models import output_embeddings

    w = output_embeddings("smollm2-135m", default_lm)
    assert torch.equal(w, default_lm.backbone.get_input_embeddings().weight)


def test_qwen_head_is_its_own_untied_output_weight():
    """The Qwen GGUF files carry an untied output.weight: decoding must use it, not the embeddings."""
    from corelib.models import load_model, output_embeddings

    lm = load_model("qwen2.5-coder-0.5b", num_layers=1)
    w = output_embeddings("qwen2.5-coder-0.5b", lm)
    emb = lm.backbone.get_input_embeddings().weight
    assert w.shape == emb.shape == (151936, 896)
    assert not torch.equal(w, emb)
    assert torch.nn.functional.cosine_similarity(w[1000:1100], emb[1000:1100]).mean() > 0.5  # the same vocabulary


@pytest.mark.shared_data
def test_detect_command_ranks_niah_heads(tmp_path, shared_data, capsys):
    from corelib.__main__ import main
    from corelib.heads import HeadSet

    out = tmp_path / "smollm2-135m.niah.json"
    args = ["detect", "--data", str(shared_data), "--method", "niah", "--needles", "1", "--lengths", "300",
            "--depths", "0.5", "--cache", str(tmp_path / "records"), "--out", str(out)]
    assert main(args) == 0
    assert "1 retrieved the needle and count" in capsys.readouterr().out
    hs = HeadSet.load(out)
    assert hs.ranking and hs.method == "niah" and len(hs) == 270
    assert main(args[:-2] + ["--needles", "9"]) == 2  # more needles than built in: a clear error
    assert "--needles 9: choose 1 to 4" in capsys.readouterr().err
