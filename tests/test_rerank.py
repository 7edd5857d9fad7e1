import subprocess
import sys

import pytest
import torch

from corelib.heads import HeadSet
from corelib.prompts import PromptError
from corelib.rerank import Reranker
from corelib.records import RecordStore
from corelib.scoring import doc_scores

REPO_ROOT = __import__("pathlib").Path(__file__).resolve().parents[1]


def test_rank_puts_the_relevant_document_first(default_lm):
    docs = [
        {"id": "cats", "title": "Cats", "text": "Cats are small carnivorous mammals kept as pets; they purr and hunt mice."},
        {"id": "sky", "title": "Sky colour", "text": "The sky looks blue because air molecules scatter short blue wavelengths of sunlight."},
        {"id": "iron", "title": "Rust", "text": "Iron oxide forms when iron reacts with oxygen in the presence of water."},
    ]
    ranked = Reranker(default_lm, words=100).rank("why is the sky blue?", docs)
    assert [r.rank for r in ranked] == [1, 2, 3] and ranked[0].doc_id == "sky"
    assert ranked[0].score > ranked[1].score >= ranked[2].score


def test_head_subset_runs_only_needed_layers_and_matches_full_record(default_lm):
    docs = ["The sky is blue.", "Cats purr.", "Water is wet."]
    full = Reranker(default_lm, words=50)
    sub = Reranker(default_lm, [(3, 1), (7, 4)], words=50)
    assert sub.num_layers == 8
    r_full = full.record("sky colour?", [d for d in full_docs(docs)])
    r_sub = sub.record("sky colour?", [d for d in full_docs(docs)])
    assert r_sub.token_scores.shape[0] == 8
    assert torch.allclose(r_sub.token_scores, r_full.token_scores[:8], atol=1e-6)
    expected = doc_scores(r_full, [(3, 1), (7, 4)])
    assert torch.allclose(doc_scores(r_sub, [(3, 1), (7, 4)]), expected, atol=1e-5)


def full_docs(texts):
    from corelib.prompts import Document

    return [Document(str(i), t) for i, t in enumerate(texts)]


def test_bad_inputs(default_lm):
    r = Reranker(default_lm)
    with pytest.raises(PromptError, match="query is empty"):
        r.rank("", ["x"])
    with pytest.raises(PromptError, match="no candidate"):
        r.rank("q", [])
    with pytest.raises(PromptError, match="duplicate document ids"):
        r.rank("q", [{"id": "a", "text": "x"}, {"id": "a", "text": "y"}])
    with pytest.raises(ValueError, match="outside smollm2-135m"):
        Reranker(default_lm, [(30, 0)])
    with pytest.raises(ValueError, match="detected on mistralai/Mistral-7B-Instruct-v0.2, not on smollm2-135m"):
        Reranker(default_lm, HeadSet([(1, 1)], "mistralai/Mistral-7B-Instruct-v0.2"))
    small = default_lm.__class__(**{**default_lm.__dict__, "max_positions": 64})
    with pytest.raises(PromptError, match=r"tokens but smollm2-135m takes at most 64: lower words \(now 100\) or top_k"):
        Reranker(small).rank("q", ["word " * 100])


def run_cli(*args):
    return subprocess.run([sys.executable, "-m", "corelib", *args], capture_output=True, text=True, cwd=REPO_ROOT, timeout=900)


def test_cli_detect_then_rerank_with_cache(shared_data, tmp_path):
    cache = str(tmp_path / "cache")
    heads = tmp_path / "heads.json"
    out = run_cli("detect", "--data", str(shared_data), "--method", "core", "--temperature", "0.01", "--samples", "2",
                  "--negatives", "4", "--positions", "2", "--words", "40", "--cache", cache, "--out", str(heads))
    assert out.returncode == 0, out.stderr
    assert len(HeadSet.load(heads)) == 270
    args = ["rerank", "--data", str(shared_data), "--collection", "scifact", "--top-k", "5", "--words", "40",
            "--max-queries", "2", "--cache", cache, "--heads", f"{heads}:8", "--out", str(tmp_path / "run.trec")]
    first = run_cli(*args)
    assert first.returncode == 0, first.stderr
    assert "first stage (run file" in first.stdout and "re-ranked" in first.stdout
    assert len((tmp_path / "run.trec").read_text().splitlines()) == 10
    second = run_cli(*args)
    assert second.stdout == first.stdout  # same numbers, from the record cache
    bad = run_cli("rerank", "--data", str(tmp_path), "--collection", "nope")
    assert bad.returncode == 2 and "not found" in bad.stderr and "Traceback" not in bad.stderr


def test_head_subset_reuses_a_cached_all_layer_record(default_lm, tmp_path):
    store = RecordStore(tmp_path)
    docs = ["The sky is blue.", "Cats purr."]
    full = Reranker(default_lm, words=50, store=store).record("sky?", full_docs(docs), group="g")
    n_files = len(list(tmp_path.rglob("*.safetensors")))
    sub = Reranker(default_lm, [(4, 1)], words=50, store=store).record("sky?", full_docs(docs), group="g")
    assert len(list(tmp_path.rglob("*.safetensors"))) == n_files  # nothing new was computed
    assert torch.equal(sub.token_scores, full.token_scores[:5])


def test_rank_returns_typed_results_that_carry_every_document(tokenizer):
    from corelib.rerank import RankedResults
    from tiny_models import tiny_model

    docs = [{"id": "a", "title": "A", "text": "alpha text", "source": "wiki"}, "plain beta text",
            {"id": "c", "text": "gamma text"}]
    rr = Reranker(tiny_model("llama", tokenizer), top_k=2)  # top_k limits collection runs, never what rank is given
    res = rr.rank("which text?", docs)
    assert isinstance(res, RankedResults) and len(res) == 3 and [r.rank for r in res] == [1, 2, 3]
    assert sorted(res.doc_ids) == ["1", "a", "c"]
    assert res.get("a").document.metadata["source"] == "wiki" and res.get("1").document.metadata == {"text": "plain beta text"}
    assert res.get("a").text == "A\nalpha text"
    assert [r.doc_id for r in res.top_k(2)] == res.doc_ids[:2] and len(rr.rank("which text?", docs, top_k=1)) == 1
    assert res[0].score >= res[1].score >= res[2].score and res.scores[res[0].doc_id] == res[0].score
    with pytest.raises(KeyError, match="no document 'zz'"):
        res.get("zz")
    many = rr.rank_many(["which text?", "another"], [docs, docs[:2]])
    assert [len(m) for m in many] == [3, 2] and many[0].doc_ids == res.doc_ids
    with pytest.raises(PromptError, match="same length"):
        rr.rank_many(["q"], [docs, docs])


def test_the_default_word_budget_is_the_studys():
    import inspect

    from corelib.prompts import DEFAULT_WORDS
    from corelib.study import profile

    assert inspect.signature(Reranker).parameters["words"].default == DEFAULT_WORDS == profile("cpu").words
