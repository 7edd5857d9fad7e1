"""The candidate order: ICR's rank 1 last by default, a seeded shuffle per query for the order check."""

import pytest

from corelib.prompts import CandidateOrder, Document, PromptError
from corelib.records import RecordStore, get_records, record_fields, record_key
from corelib.rerank import Reranker
from tiny_models import tiny_model

DOCS = [Document(f"d{i}", f"Document number {i} talks about topic {i} at some length.") for i in range(8)]


@pytest.fixture(scope="module")
def tiny(tokenizer):
    return tiny_model("llama", tokenizer)


def test_seeded_shuffle_is_a_fixed_permutation_per_query():
    order = CandidateOrder(shuffle_seed=0)
    p1 = order.permutation("q1", 20)
    assert sorted(p1) == list(range(20))
    assert p1 == CandidateOrder(shuffle_seed=0).permutation("q1", 20)  # the same on every call and run
    assert p1 != order.permutation("q2", 20)  # each query its own draw
    assert p1 != CandidateOrder(shuffle_seed=1).permutation("q1", 20)
    # a fixed value: the draw must not change with the Python version or platform (str seeds hash with sha512)
    assert order.permutation("q1", 5) == (3, 4, 2, 0, 1)
    assert CandidateOrder().permutation("q1", 4) == (3, 2, 1, 0)  # ICR: rank 1 last
    assert CandidateOrder(rank1_last=False).permutation("q1", 4) == (0, 1, 2, 3)


@pytest.mark.parametrize("seed", [1.5, "0", True])
def test_a_seed_that_is_not_a_whole_number_is_refused(seed):
    with pytest.raises(PromptError, match="shuffle_seed"):
        CandidateOrder(shuffle_seed=seed)


def test_shuffled_requests_hold_the_same_candidates_and_their_permutation(tiny, tmp_path):
    icr = Reranker(tiny, words=20)
    shuffled = Reranker(tiny, words=20, order=CandidateOrder(shuffle_seed=3))
    a = icr.requests("what is topic 3", DOCS, query_id="q1")
    b = shuffled.requests("what is topic 3", DOCS, query_id="q1")
    assert a.permutation is None and b.permutation is not None
    assert sorted(d.doc_id for d in a.docs) == sorted(d.doc_id for d in b.docs)
    assert [d.doc_id for d in b.docs] == [DOCS[r].doc_id for r in b.permutation]
    assert [d.doc_id for d in b.docs] != [d.doc_id for d in a.docs]
    fa, fb = (record_fields(tiny.fingerprint, tiny.dtype, tiny.total_layers, True, r) for r in (a, b))
    assert "permutation" not in fa  # ICR-order keys are the ones records always had
    assert fb["permutation"] == list(b.permutation) and record_key(fa) != record_key(fb)

    store = RecordStore(tmp_path)
    rec = get_records(tiny, [b], store=store)[0]
    assert rec.permutation == b.permutation
    again = get_records(tiny, [b], store=RecordStore(tmp_path))[0]  # read back from disk
    assert again.permutation == b.permutation and again.doc_ids == rec.doc_ids
    assert len(list(tmp_path.rglob("*.safetensors"))) == 1


def test_order_and_rank1_last_false_together_are_refused(tiny):
    with pytest.raises(PromptError, match="not both"):
        Reranker(tiny, order=CandidateOrder(shuffle_seed=0), rank1_last=False)
    with pytest.raises(PromptError, match="CandidateOrder"):
        Reranker(tiny, order="shuffled")


def test_the_cpu_order_sample_is_stratified_and_part_of_each_model_sample(shared_data):
    from corelib.study import Study

    S = Study("cpu", data=shared_data, models=["smollm2-135m"])
    m = "smollm2-135m"
    sizes = {c: len(S.order_sample(m, c)) for c in S.p.collections}
    assert sizes == {"scifact": 64, "arguana": 64, "cranfield": 64, "cisi": 76, "med": 30, "npl": 93, "lisa": 35}
    assert sum(sizes.values()) == 426
    for c in S.p.collections:
        assert set(S.order_sample(m, c)) <= set(S.candidates(m, c).ranking)
    assert "scifact (shuffled)" in S.warm_steps(m)
    with pytest.raises(ValueError, match="no warm step"):
        S.warm(steps=["scifact shuffled"])


def test_a_bf16_cpu_record_is_its_own_record_and_close_to_fp32(tokenizer, tmp_path):
    import torch

    from corelib.study import profile

    lm32 = tiny_model("llama", tokenizer)
    lm16 = tiny_model("llama", tokenizer, dtype=torch.bfloat16)
    store = RecordStore(tmp_path)
    req = Reranker(lm32, words=20).requests("what is topic 3", DOCS, query_id="q1")
    r32 = get_records(lm32, [req], store=store)[0]
    r16 = get_records(lm16, [req], store=store)[0]
    assert len(list(tmp_path.rglob("*.safetensors"))) == 2  # the dtype is part of the key
    assert r16.token_scores.dtype == torch.float32  # scores are kept in fp32 whatever the forward's dtype
    assert (r16.token_scores - r32.token_scores).abs().max() < 0.05
    p = profile("cpu", dtype_by_model=(("qwen2.5-coder-1.5b", "bfloat16"),))
    assert p.dtype_for("qwen2.5-coder-1.5b") == "bfloat16" and p.dtype_for("smollm2-135m") is None
    assert p.sizes("qwen2.5-coder-1.5b").endswith("; bfloat16 records")


def test_an_order_check_for_one_model_keeps_the_other_models_rows(tmp_path, monkeypatch):
    """`order-check --model B` replaces B's rows of the committed table and keeps A's: the check is completed
    one model at a time, each model's rows coming from its own records only."""
    import pandas as pd

    from corelib.study import Study, order_check

    def rows(model, value):
        return pd.DataFrame({"model": model, "collection": "med", "query_id": ["1", "2"], "order": "shuffled (seed 0)",
                             "method": "ICR", "ndcg@10": value, "kendall tau vs BM25": 0.1})

    S = Study("cpu", out=tmp_path, models=["gemma3-270m"])
    S.tables.write("per_query", pd.DataFrame(columns=S.tables.columns("per_query")))
    S.tables.write("order_per_query", pd.concat([rows("smollm2-135m", 0.25), rows("gemma3-270m", 0.5)]))
    monkeypatch.setattr(order_check, "order_per_query", lambda study, pq: rows("gemma3-270m", 0.75))
    monkeypatch.setattr(order_check, "order_claims", lambda study, opq: opq)
    monkeypatch.setattr(order_check, "order_agreement", lambda study, opq: opq)
    out = order_check.write_all(S)["order_per_query"]
    back = S.tables.read("order_per_query")
    for table in (out, back):
        assert table.groupby("model")["ndcg@10"].first().to_dict() == {"smollm2-135m": 0.25, "gemma3-270m": 0.75}
        assert len(table) == 4
    # a run of the profile's first model: its new rows go before the kept ones (the profile's order, which the
    # comparisons, the summary and the claims matrix follow)
    S = Study("cpu", out=tmp_path, models=["smollm2-135m"])
    monkeypatch.setattr(order_check, "order_per_query", lambda study, pq: rows("smollm2-135m", 0.125))
    out = order_check.write_all(S)["order_per_query"]
    assert list(dict.fromkeys(out["model"])) == ["smollm2-135m", "gemma3-270m"]
    assert out.groupby("model")["ndcg@10"].first().to_dict() == {"smollm2-135m": 0.125, "gemma3-270m": 0.75}


def _tau_study(tmp_path, monkeypatch, icr_run):
    """A one-model cpu study whose committed order check lacks the tau in ICR's order, with its records,
    candidates and heads stood in (no forward)."""
    from types import SimpleNamespace

    import pandas as pd

    from corelib.study import Study, order_check

    S = Study("cpu", out=tmp_path, models=["gemma3-270m"])
    S.p = type(S.p)(**{**S.p.__dict__, "collections": ("med",)})
    bm25 = {"1": {"a": 3.0, "b": 2.0, "c": 1.0}, "2": {"a": 3.0, "b": 2.0, "c": 1.0}}
    qrels = {"1": {"a": 1}, "2": {"c": 1}}
    monkeypatch.setattr(S, "collection", lambda c: SimpleNamespace(qrels=qrels))
    monkeypatch.setattr(S, "candidates", lambda m, c: SimpleNamespace(run=lambda: bm25))
    monkeypatch.setattr(S, "order_sample", lambda m, c: ["1", "2"])
    monkeypatch.setattr(S, "reranker", lambda m: SimpleNamespace(records=lambda coll, cand, qids: ["records"]))
    monkeypatch.setattr(order_check, "committed_heads", lambda s, m, methods: {x: None for x in methods})
    monkeypatch.setattr(order_check, "record_run", lambda records, heads: icr_run)
    monkeypatch.setattr(order_check, "order_claims", lambda study, opq: opq)
    monkeypatch.setattr(order_check, "order_agreement", lambda study, opq: opq)

    def rows(order, method, ndcg, tau):
        return pd.DataFrame({"model": "gemma3-270m", "collection": "med", "query_id": ["1", "2"], "order": order,
                             "method": method, "ndcg@10": ndcg, "kendall tau vs BM25": tau})

    S.tables.write("order_per_query", pd.concat([
        rows("shuffled (seed 0)", "ICR", [0.3, 0.4], [0.2, -0.2]), rows("shuffled (seed 0)", "BM25", [1.0, 0.5], 1.0),
        rows(order_check.ICR_ORDER_NAME, "ICR", [1.0, 0.5], float("nan")),
        rows(order_check.ICR_ORDER_NAME, "BM25", [1.0, 0.5], float("nan"))]))
    return S, order_check


def test_filling_the_icr_order_tau_keeps_every_committed_value(tmp_path, monkeypatch):
    """`order-check --fill-tau`: the tau in ICR's order comes from the ICR-order records, every other value
    of the committed table is kept (the shuffled rows need no record)."""
    import math

    import numpy as np

    ranking = {"1": {"a": 3.0, "b": 1.0, "c": 2.0}, "2": {"a": 3.0, "b": 2.0, "c": 1.0}}  # BM25's nDCG on both
    S, order_check = _tau_study(tmp_path, monkeypatch, ranking)
    before = S.tables.read("order_per_query")
    got = order_check.fill_icr_order_tau(S)["order_per_query"]
    icr = got[(got["order"] == order_check.ICR_ORDER_NAME) & (got["method"] == "ICR")]
    assert icr["kendall tau vs BM25"].round(6).tolist() == [round(1 / 3, 6), 1.0]
    assert got.loc[(got["order"] == order_check.ICR_ORDER_NAME) & (got["method"] == "BM25"),
                   "kendall tau vs BM25"].tolist() == [1.0, 1.0]
    keep = [c for c in got if c != "kendall tau vs BM25"]
    assert got[keep].equals(before[keep])
    shuffled = got["order"] != order_check.ICR_ORDER_NAME
    np.testing.assert_array_equal(got.loc[shuffled, "kendall tau vs BM25"], before.loc[shuffled, "kendall tau vs BM25"])
    assert not math.isnan(S.tables.read("order_per_query")["kendall tau vs BM25"].sum())
    with pytest.raises(ValueError, match="already hold their Kendall tau"):
        order_check.fill_icr_order_tau(S)


def test_filling_the_tau_refuses_records_that_disagree_with_the_committed_ndcg(tmp_path, monkeypatch):
    ranking = {"1": {"a": 1.0, "b": 2.0, "c": 3.0}, "2": {"a": 3.0, "b": 2.0, "c": 1.0}}  # query 1: nDCG 0.5, not 1.0
    S, order_check = _tau_study(tmp_path, monkeypatch, ranking)
    with pytest.raises(ValueError, match="another nDCG@10 than the committed rows on 1 of 2 queries"):
        order_check.fill_icr_order_tau(S)
    assert S.tables.read("order_per_query")["kendall tau vs BM25"].isna().sum() == 4  # nothing written


def test_the_tau_fill_reads_the_committed_rankings_and_refuses_other_weights(tmp_path):
    import shutil

    from corelib.heads import HeadSet, head_ranking_path
    from corelib.study import Study, order_check

    S = Study("cpu", out=tmp_path, models=["gemma3-270m"])
    spec = S.spec("gemma3-270m")
    shutil.copytree("results/heads", S.heads_dir)
    heads = order_check.committed_heads(S, "gemma3-270m", {"CoRe-R", "QR-R"})
    assert heads["ICR"] is None and "NIAH-R" not in heads
    path = head_ranking_path(S.heads_dir, spec.model_id, "core", spec.fingerprint)
    assert heads["CoRe-R"] == HeadSet.load(path).heads[:8]
    other = HeadSet.load(path)
    other.fingerprint = "sha256:not-these-weights"
    other.save(path)
    with pytest.raises(ValueError, match="other weights"):
        order_check.committed_heads(S, "gemma3-270m", {"CoRe-R"})
