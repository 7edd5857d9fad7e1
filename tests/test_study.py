import pandas as pd
import pytest
import torch

from corelib import report, study
from corelib.heads import HeadScores
from corelib.records import QueryRecord
from corelib.scoring import record_run


def rec(qid, token_scores, bounds, mass=None, positive=None):
    L, H, _ = token_scores.shape
    n = len(bounds) - 1
    mass = mass if mass is not None else torch.zeros(L, H, n)
    return QueryRecord(qid, [f"d{i}" for i in range(n)], torch.tensor(bounds), token_scores, mass, None, True, 5, positive)


def test_profiles_are_fixed_and_named():
    cpu = study.profile("cpu")
    assert cpu.queries_for("smollm2-135m") == 300 and cpu.queries_for("gemma3-270m") == 300
    assert cpu.queries_for("qwen2.5-coder-0.5b", "scifact") == 30
    assert cpu.queries_for("smollm2-135m", "xquad-r/de") == 50 and cpu.queries_for("gemma3-270m", "xquad-r/de") == 30
    assert (cpu.top_k, cpu.words, cpu.negatives, cpu.positions, cpu.detection_samples) == (20, 100, 19, 2, 100)
    assert cpu.models_for_ablations == ("smollm2-135m",)
    assert study.profile("smoke", queries=2).queries == 2
    with pytest.raises(ValueError, match="unknown profile"):
        study.profile("huge")


def test_kept_layers_and_restriction():
    assert [study.kept_layers(30, p) for p in (0.0, 0.3, 0.5, 0.7)] == [30, 21, 15, 9]
    assert study.kept_layers(18, 0.5) == 9 and study.kept_layers(24, 0.7) == 8
    hs = HeadScores(torch.tensor([[0.1, 0.2], [0.9, 0.3], [0.8, 0.0]]), "m", "core", {})
    assert hs.order()[0] == (1, 0)
    assert study.restrict_layers(hs, 1).order()[:2] == [(0, 1), (0, 0)]


def test_sweep_equals_scoring_each_prefix():
    g = torch.Generator().manual_seed(0)
    recs = [rec(f"q{i}", torch.randn(2, 2, 9, generator=g), [0, 3, 6, 9]) for i in range(3)]
    qrels = {f"q{i}": {"d1": 1} for i in range(3)}
    order = [(1, 1), (0, 0), (1, 0), (0, 1)]
    curve = study.sweep(recs, order, qrels)
    for k in range(1, 5):
        assert curve[k] == pytest.approx(study.ndcg(record_run(recs, order[:k]), qrels))


def test_with_negatives_keeps_the_positive_first():
    mass = torch.arange(5.0).view(1, 1, 5)
    r = rec("q", torch.zeros(1, 1, 1), [0, 0, 0, 0, 0, 1], mass=mass, positive=3)
    cut = study.with_negatives([r], 2)[0]
    assert cut.positive == 0 and cut.doc_ids == ["d3", "d0", "d1"]
    assert cut.doc_mass.flatten().tolist() == [3.0, 0.0, 1.0]


def test_length_bias_detects_a_length_preference():
    ts = torch.ones(1, 1, 10)  # every token equal: scores grow with length
    r = rec("q", ts, [0, 1, 3, 10])
    out = study.length_bias([r])
    assert out["spearman(score, length)"] == pytest.approx(1.0)
    assert out["top-1 length / mean length"] == pytest.approx(7 / (10 / 3))


def test_verdicts_from_tables(tmp_path):
    pd.DataFrame({"query": ["a", "b", "c"], "model": "m", "collection": "x", "BM25": 0.1,
                  "ICR": [0.2, 0.3, 0.4], "QR-R": [0.5, 0.6, 0.7], "CoRe-R": [0.31, 0.42, 0.49]}).to_csv(tmp_path / "03_per_query.csv")
    pd.DataFrame({"model": ["m"], "median relative depth": [0.5], "top heads": [8], "in middle third": [6]}).to_csv(tmp_path / "05_depth.csv")
    pd.DataFrame({"model": ["m", "m"], "pruned_share": [0.0, 0.5], "ndcg@10": [0.50, 0.492], "latency_ratio": [1.0, 0.5]}).to_csv(tmp_path / "06_pruning.csv")
    pd.DataFrame({"model": ["m"], "collection": ["x"], "order": ["core"], "peak nDCG@10": [0.5], "heads at peak": [12],
                  "1 head": [0.3], "ICR": [0.4]}).to_csv(tmp_path / "04_peaks.csv")
    v = report.verdicts(tmp_path).set_index(["claim", "model"])["verdict"]
    assert not any("multilingual" in c for c, _ in v.index)  # notebook 7 not run: no multilingual rows
    assert v["CoRe-R >= ICR", "m"] == "holds"  # +10.3 points, p < 0.05
    assert v["CoRe-R >= QR-R", "m"].startswith("does not hold")
    assert v["top heads in middle layers", "m"] == "holds"
    assert v["50% pruning within 0.5 point", "m"] == "does not hold"  # -0.8 points
    assert v["peak below 10 heads", "m"] == "does not hold"
    pd.DataFrame({"query": ["a", "b", "c"], "model": "m", "collection": "xquad-r/de", "BM25": 0.1,
                  "ICR": [0.5, 0.6, 0.7], "QR-R": [0.2, 0.3, 0.4], "CoRe-R": [0.31, 0.42, 0.49]}).to_csv(tmp_path / "07_per_query.csv")
    out = report.verdicts(tmp_path).set_index(["claim", "model"])
    assert out.loc[("CoRe-R >= ICR (multilingual)", "m"), "verdict"].startswith("does not hold")
    assert out.loc[("CoRe-R >= QR-R (multilingual)", "m"), "verdict"] == "holds"
    assert out.loc[("CoRe-R >= QR-R (multilingual)", "m"), "ours"] == "+10.67 points over 3 queries (xquad-r/de)"
    assert out.loc[("CoRe-R >= ICR", "m"), "verdict"] == "holds"  # Table 1's rows are unchanged


@pytest.mark.shared_data
def test_warm_caches_every_step_and_resumes_without_forwards(monkeypatch, tmp_path, tokenizer, shared_data):
    from corelib.records import RecordStore
    from tiny_models import tiny_model

    lm = tiny_model("llama", tokenizer)
    calls = []
    lm.backbone.register_forward_pre_hook(lambda *a: calls.append(1))
    monkeypatch.setattr(study, "spec", lambda name: lm)
    monkeypatch.setattr(study, "store", lambda: RecordStore(tmp_path))
    p = study.profile("smoke", models=("tiny-llama",), collections=("scifact",), multilingual=("xquad-r/de",),
                      queries=2, detection_samples=2, negatives=3)
    study.warm(p, data=shared_data)
    # detection: 2 queries x 2 positions, one forward each; each collection: 2 calibrated records,
    # three backbone calls each (the shared document prefix, then the query and the N/A suffixes)
    assert len(calls) == 2 * 2 + 2 * (2 * 3)
    assert len(list(tmp_path.rglob("*.safetensors"))) == 2 * 2 + 2 + 2
    calls.clear()
    study.warm(p, data=shared_data)  # a second run (or a resumed one) reads everything from the cache
    assert calls == []


def test_warm_command_names_a_model_outside_the_profile(capsys):
    from corelib.__main__ import main

    assert main(["warm", "--profile", "smoke", "--model", "gemma3-270m"]) == 2
    assert "['gemma3-270m'] not in profile 'smoke' (its models: smollm2-135m)" in capsys.readouterr().err


def test_method_means_average_collections_per_model():
    t = pd.DataFrame({"model": ["a", "a", "b"], "collection": ["x", "y", "x"], "BM25": [0.1, 0.3, 0.5],
                      "ICR": [0.2, 0.4, 0.6], "QR-R": 0.0, "CoRe-R": [1.0, 0.0, 0.25]})
    avg = study.method_means(t)
    assert avg.loc["a", "BM25"] == pytest.approx(0.2) and avg.loc["a", "CoRe-R"] == pytest.approx(0.5)
    assert avg.loc["b", "ICR"] == pytest.approx(0.6) and avg["collections"].tolist() == [2, 1]
