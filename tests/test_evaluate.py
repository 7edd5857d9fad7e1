import numpy as np
import pytest

from corelib.evaluate import evaluate_run, mean_ndcg_rows


def test_mean_ndcg_rows_equals_evaluating_each_run():
    rng = np.random.default_rng(0)
    qrels, scored = {}, []
    for q in range(25):
        docs = [f"d{rng.integers(0, 50)}-{i}" for i in range(int(rng.integers(3, 15)))]
        qrels[f"q{q}"] = {d: int(rng.integers(0, 3)) for d in rng.choice(docs, 3, replace=False)}
        qrels[f"q{q}"][f"unretrieved{q}"] = 1  # counts in the ideal DCG only
        scored.append((f"q{q}", docs, rng.integers(0, 3, (5, len(docs))).astype(float)))  # many ties
    scored.append(("not-judged", ["x"], np.zeros((5, 1))))
    got = mean_ndcg_rows(scored, qrels)
    for r in range(5):
        run = {q: dict(zip(docs, s[r])) for q, docs, s in scored}
        assert got[r] == pytest.approx(evaluate_run(run, qrels)["ndcg@10"], abs=1e-12)


def test_mean_ndcg_rows_rejects_bad_shapes_and_foreign_queries():
    with pytest.raises(ValueError, match="share no query"):
        mean_ndcg_rows([("a", ["d"], np.zeros((1, 1)))], {"b": {"d": 1}})
    with pytest.raises(ValueError, match=r"scores must be \[rows, 2\]"):
        mean_ndcg_rows([("a", ["d", "e"], np.zeros((1, 3)))], {"a": {"d": 1}})


def test_p_value_of_runs_with_equal_scores_is_one_not_nan():
    from corelib.evaluate import p_values

    qrels = {"q1": {"a": 1}, "q2": {"b": 1}, "q3": {"a": 1}}
    base = {"q1": {"a": 2.0, "b": 1.0}, "q2": {"a": 2.0, "b": 1.0}, "q3": {"a": 1.0, "b": 2.0}}
    same = {q: {d: s * 10 for d, s in docs.items()} for q, docs in base.items()}  # other scores, same ranking
    other = {"q1": {"a": 1.0, "b": 2.0}, "q2": {"a": 1.0, "b": 2.0}, "q3": {"a": 2.0, "b": 1.0}}
    p = p_values({"x": base, "same": same, "other": other}, qrels, against="x")
    assert p["same"] == 1.0
    assert 0 <= p["other"] < 1
