"""The order remedies of the library: the permutation-invariant prompt, aggregation over orders, the position prior."""

import pytest
import torch

from corelib.attention import head_token_scores
from corelib.order_robust import (Aggregate, aggregate_runs, permutation_orders, position_prior, prior_corrected_run,
                                  prior_corrected_scores)
from corelib.prompts import ICR_ORDER, CandidateOrder, Document, build_invariant_prompt
from corelib.records import QueryRecord, RecordRequest, RecordStore, build_record, get_records
from corelib.rerank import Reranker
from corelib.scoring import doc_scores
from tiny_models import tiny_model

DOCS = [Document(f"d{i}", " ".join(f"w{i}x{j}" for j in range(6 + 3 * i)) + f" topic {i}") for i in range(6)]
QUERY = "what is said about topic 3"
PERMUTED = [3, 0, 5, 1, 4, 2]


def scores_by_id(record) -> dict[str, float]:
    return dict(zip(record.doc_ids, doc_scores(record).tolist()))


def test_the_invariant_prompt_scores_every_order_alike_on_the_default_model(default_lm):
    a = scores_by_id(build_record(default_lm, QUERY, DOCS, invariant=True))
    b = scores_by_id(build_record(default_lm, QUERY, [DOCS[i] for i in PERMUTED], invariant=True))
    assert max(abs(a[d] - b[d]) for d in a) < 1e-5
    # the causal prompt of the same documents does depend on their order (else the test would say nothing)
    c = scores_by_id(build_record(default_lm, QUERY, DOCS))
    d = scores_by_id(build_record(default_lm, QUERY, [DOCS[i] for i in PERMUTED]))
    assert max(abs(c[k] - d[k]) for k in c) > 1e-2


@pytest.mark.parametrize("arch", ["gemma3", "qwen2"])  # gemma3: sliding-window layers, masked by position
def test_the_invariant_prompt_is_invariant_on_other_architectures(tokenizer, arch):
    lm = tiny_model(arch, tokenizer)
    for calibrate in (True, False):
        a = build_record(lm, QUERY, DOCS, invariant=True, calibrate=calibrate)
        b = build_record(lm, QUERY, [DOCS[i] for i in PERMUTED], invariant=True, calibrate=calibrate)
        sa, sb = scores_by_id(a), scores_by_id(b)
        assert max(abs(sa[d] - sb[d]) for d in sa) < 1e-5
        mass_a = dict(zip(a.doc_ids, a.doc_mass.unbind(-1)))
        mass_b = dict(zip(b.doc_ids, b.doc_mass.unbind(-1)))
        assert all(torch.allclose(mass_a[d], mass_b[d], atol=1e-6) for d in mass_a)


def test_one_block_is_the_causal_forward_of_the_same_tokens(tokenizer):
    """With one document the block layout is an ordinary causal prompt: the masked forward must give what the
    plain forward of the same token ids gives (an oracle for the mask and the position ids)."""
    lm = tiny_model("llama", tokenizer)
    prompt = build_invariant_prompt(tokenizer, QUERY, DOCS[:1], lm.prefix, lm.suffix)
    assert prompt.positions == list(range(len(prompt.input_ids)))
    plain = head_token_scores(lm, prompt.input_ids, prompt.query_span)
    record = build_record(lm, QUERY, DOCS[:1], invariant=True, calibrate=False)
    s, e = prompt.doc_spans[0]
    assert torch.allclose(record.token_scores, plain[..., s:e], atol=1e-6)


def test_the_invariant_prompt_layout(tokenizer):
    p = build_invariant_prompt(tokenizer, QUERY, DOCS)
    header = p.blocks[0][0]
    assert all(p.positions[s] == header for s, _ in p.blocks)  # every block starts right after the header
    longest = max(e - s for s, e in p.blocks)
    assert p.positions[p.blocks[-1][1]] == header + longest  # the query follows the longest block
    assert "[document 1]" not in p.text and p.text.count("[document]") == len(DOCS)
    assert all(bs <= ds < de <= be for (bs, be), (ds, de) in zip(p.blocks, p.doc_spans))
    q0, q1 = p.query_span
    assert tokenizer.decode(p.input_ids[q0:q1]).strip().endswith(QUERY)


def test_every_order_of_an_invariant_request_is_one_record(tokenizer, tmp_path):
    lm = tiny_model("llama", tokenizer)
    rr = Reranker(lm, words=20, invariant=True, store=RecordStore(tmp_path))
    shuffled = Reranker(lm, words=20, invariant=True, order=CandidateOrder(shuffle_seed=1), store=RecordStore(tmp_path))
    a, b = rr.record(QUERY, DOCS, "q"), shuffled.record(QUERY, DOCS, "q")
    assert len(list(tmp_path.rglob("*.safetensors"))) == 1  # the shuffle was served by the first record
    assert scores_by_id(a) == scores_by_id(b)
    ranked = [d.doc_id for d in rr.rank(QUERY, DOCS)]
    assert ranked == [d.doc_id for d in rr.rank(QUERY, [DOCS[i] for i in PERMUTED])]
    # detection prompts of one query that differ only in the positive's slot are one record, computed once
    req = [RecordRequest("q", QUERY, tuple(DOCS), "det", 0, invariant=True),
           RecordRequest("q", QUERY, tuple(DOCS[1:] + DOCS[:1]), "det", 5, invariant=True)]
    store = RecordStore(tmp_path / "det")
    recs = get_records(lm, req, calibrate=False, store=store)
    assert len(list((tmp_path / "det").rglob("*.safetensors"))) == 1
    assert recs[0].doc_ids[recs[0].positive] == recs[1].doc_ids[recs[1].positive] == "d0"


def test_a_non_bool_invariant_is_refused(tokenizer):
    with pytest.raises(ValueError, match="invariant="):
        Reranker(tiny_model("llama", tokenizer), invariant="yes")


# ----------------------------------------------------------------------------- aggregation over orders


def test_permutation_orders_put_the_given_order_first_and_share_the_extra_ones():
    icr = permutation_orders(ICR_ORDER, 3)
    shuffled = permutation_orders(CandidateOrder(shuffle_seed=0), 3)
    assert icr[0] == ICR_ORDER and shuffled[0] == CandidateOrder(shuffle_seed=0)
    assert icr[1:] == shuffled[1:] == [CandidateOrder(shuffle_seed=1), CandidateOrder(shuffle_seed=2)]
    assert permutation_orders(ICR_ORDER, 1) == [ICR_ORDER]
    with pytest.raises(ValueError, match="base order"):
        permutation_orders(CandidateOrder(shuffle_seed=2), 3)
    with pytest.raises(ValueError, match="whole number"):
        permutation_orders(ICR_ORDER, 0)


def test_aggregation_by_mean_score_and_by_mean_reciprocal_rank():
    runs = [{"q": {"a": 3.0, "b": 2.0, "c": 1.0}}, {"q": {"a": 0.0, "b": 5.0, "c": 1.0}}]
    assert aggregate_runs(runs, Aggregate.MEAN_SCORE) == {"q": {"a": 1.5, "b": 3.5, "c": 1.0}}
    # ranks: a 1 and 3, b 2 and 1, c 3 and 2
    got = aggregate_runs(runs, Aggregate.MEAN_RECIPROCAL_RANK)["q"]
    assert got == pytest.approx({"a": (1 + 1 / 3) / 2, "b": (1 / 2 + 1) / 2, "c": (1 / 3 + 1 / 2) / 2})
    with pytest.raises(ValueError, match="other candidates"):
        aggregate_runs([{"q": {"a": 1.0}}, {"q": {"b": 1.0}}])
    with pytest.raises(ValueError, match="Aggregate"):
        aggregate_runs(runs, "mean")


# ----------------------------------------------------------------------------- the position prior


def _record(qid, scores_by_slot, positive=None, calibrated=True):
    """A one-token-per-document record whose document scores are ``scores_by_slot`` (prompt order)."""
    n = len(scores_by_slot)
    ts = torch.tensor(scores_by_slot, dtype=torch.float32).view(1, 1, n)
    return QueryRecord(qid, [f"{qid}-{i}" for i in range(n)], torch.arange(n + 1), ts, ts.clone(),
                       ts.clone() if calibrated else None, calibrated, n, positive)


def test_the_position_prior_is_each_slot_mean_over_negatives_counted_from_the_query():
    records = [_record("a", [1.0, 2.0, 9.0], positive=2), _record("b", [3.0, 50.0, 4.0], positive=1)]
    prior = position_prior(records)
    # index 0 = the slot nearest the query (the last in the prompt); the positives (9 and 50) never count
    assert prior.tolist() == pytest.approx([4.0, 2.0, 2.0])
    shorter = _record("c", [10.0, 10.0])  # two documents: they sit in the two slots nearest the query
    assert prior_corrected_scores(shorter, prior).tolist() == pytest.approx([8.0, 6.0])
    assert prior_corrected_run([shorter], prior) == {"c": {"c-0": pytest.approx(8.0), "c-1": pytest.approx(6.0)}}
    with pytest.raises(ValueError, match="slots"):
        prior_corrected_scores(_record("d", [1.0] * 4), prior)


def test_the_position_prior_needs_calibrated_detection_records():
    with pytest.raises(ValueError, match="calibrated"):
        position_prior([_record("a", [1.0, 2.0], positive=0, calibrated=False)])
    with pytest.raises(ValueError, match="positive"):
        position_prior([_record("a", [1.0, 2.0])])
    with pytest.raises(ValueError, match="no negative"):
        position_prior([_record("a", [1.0, 2.0], positive=0)] * 2 + [_record("b", [1.0, 2.0, 3.0], positive=0)])
