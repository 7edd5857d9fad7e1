"""A study narrowed to some of its profile's models recomputes their rows and keeps the others' committed rows;
the columns computed over a whole table (Holm over the models, verdicts) are recomputed over all of them."""

import numpy as np
import pandas as pd
import pytest

from corelib.study import Study, analysis
from corelib.study.tables import schema


def per_query_rows(model, values, qids=("1", "2", "10")):
    return pd.DataFrame({"model": model, "first stage": "bm25", "collection": "scifact", "query_id": list(qids),
                         "method": "CoRe-R", "head source": "nq", "k": 8, "ndcg@10": values})


def depth_row(model, top_layers):
    """A depth row whose test the table's family function computes from its top layers (of 30)."""
    return {"model": model, "layers": 30, "top heads": 8, "top layers": list(top_layers), "in middle third": 5,
            "distinct top layers": np.nan, "of them in middle third": np.nan, "median relative depth": 0.5,
            "p more": np.nan, "p fewer": np.nan, "global-attention layers": "all", "top heads in global layers": 8,
            "largest share keeping the top layers": 0.5, "p more holm": np.nan, "p fewer holm": np.nan, "verdict": ""}


@pytest.fixture
def studies(tmp_path):
    full = Study("cpu", out=tmp_path)
    narrowed = Study("cpu", out=tmp_path, models=["qwen2.5-coder-1.5b"])
    return full, narrowed


def test_a_narrowed_study_names_the_models_it_leaves_out(studies):
    full, narrowed = studies
    assert full.other_models == ()
    assert narrowed.other_models == ("smollm2-135m", "gemma3-270m", "qwen2.5-coder-0.5b")


def test_a_narrowed_study_replaces_its_models_rows_and_keeps_the_others(studies):
    full, narrowed = studies
    old = pd.concat([per_query_rows(m, [0.1, 0.2, 0.3]) for m in full.p.models], ignore_index=True)
    full.tables.write("per_query", old)
    got = narrowed.tables.write("per_query", per_query_rows("qwen2.5-coder-1.5b", [0.9, 0.8, 0.7, 0.6],
                                                          qids=("1", "2", "10", "11")))
    assert list(dict.fromkeys(got["model"])) == list(full.p.models)  # the profile's order
    assert got[got["model"] == "qwen2.5-coder-1.5b"]["ndcg@10"].tolist() == [0.9, 0.8, 0.7, 0.6]
    assert got[got["model"] == "smollm2-135m"]["ndcg@10"].tolist() == [0.1, 0.2, 0.3]
    assert len(got) == 3 * 3 + 4
    # as written and as read: query ids are text, so a query of a kept row and of a new row pool together
    read = narrowed.tables.read("per_query")
    assert read["query_id"].map(type).eq(str).all()
    pd.testing.assert_frame_equal(read, got.assign(query_id=got["query_id"].astype(str)))
    # the full study writes what it is given: nothing kept
    assert len(full.tables.write("per_query", per_query_rows("smollm2-135m", [0.5, 0.5, 0.5]))) == 3


def test_holm_over_the_models_is_recomputed_over_the_kept_and_new_rows(studies):
    full, narrowed = studies
    # layers 10-19 of 30 are the middle third: 6, 5, 4 of 6 distinct layers in it; then one of 6
    tops = {m: t for m, t in zip(full.p.models, ([10, 11, 12, 13, 14, 15], [10, 11, 12, 13, 14, 0], [10, 11, 12, 13, 0, 1],
                                                  [10, 0, 1, 2, 3, 4]))}
    full.tables.write("depth", pd.DataFrame([depth_row(m, t) for m, t in tops.items()]))
    got = narrowed.tables.write("depth", pd.DataFrame([depth_row("qwen2.5-coder-1.5b", [10, 11, 12, 13, 14, 15, 16, 17])]))
    tests = [analysis.middle_third_test(t, 30) for t in [*list(tops.values())[:3], [10, 11, 12, 13, 14, 15, 16, 17]]]
    p_new, p_fewer = [t[2] for t in tests], [t[3] for t in tests]
    assert got["of them in middle third"].tolist() == [6, 5, 4, 8] and got["distinct top layers"].tolist() == [6, 6, 6, 8]
    np.testing.assert_allclose(got["p more holm"], analysis.holm(p_new))
    assert got["verdict"].tolist() == [analysis.middle_third_verdict(a, b)
                                       for a, b in zip(analysis.holm(p_new), analysis.holm(p_fewer))]
    assert got["verdict"].iloc[-1] == "supported"


def comparison(model, p, p_inferior=np.nan, claim="50% pruning within 0.5 point"):
    return {"claim": claim, "model": model, "a": "x", "b": "y", "head source": "nq", "difference": -1.0,
            "ci low": -2.0, "ci high": 0.0, "p": p, "p holm": np.nan, "p inferior": p_inferior,
            "p holm inferior": np.nan, "detectable (80% power)": 1.0, "queries": 100, "collections": 7,
            "verdict": "", "ci low (family)": -2.5, "ci high (family)": 0.5, "detectable (80% power, family)": 1.2}


def test_a_merged_comparison_drops_the_pooled_row_and_the_kept_rows_family_intervals(studies):
    full, narrowed = studies
    old = [comparison(m, 0.9, 0.001) for m in full.p.models] + [comparison("pooled (a query once)", 0.9, 0.0005)]
    written = full.tables.write("comparisons_pruning", pd.DataFrame(old))
    assert written["verdict"].tolist() == ["contradicted"] * 5
    assert written["ci low (family)"].notna().all()
    got = narrowed.tables.write("comparisons_pruning", pd.DataFrame([comparison("qwen2.5-coder-1.5b", 0.001, 0.9)]))
    assert got["model"].tolist() == list(full.p.models)  # no pooled row: it needs every model's queries
    np.testing.assert_allclose(got["p holm"], analysis.holm([0.9, 0.9, 0.9, 0.001]))
    assert got["verdict"].tolist() == ["contradicted"] * 3 + ["supported"]
    # the kept rows' level may have changed with the new p: left empty; the new row's is its builder's
    assert got[list(schema.FAMILY_INTERVAL)].iloc[:3].isna().all().all()
    assert got[list(schema.FAMILY_INTERVAL)].iloc[3].tolist() == [-2.5, 0.5, 1.2]


def test_a_narrowed_comparison_sets_its_interval_at_the_level_of_the_merged_family(studies):
    """The 1.5B's pruning margin recomputed alone: its 90% interval at the Holm level that its p has among the
    committed p of the three other models (which the write keeps), so that it agrees with the merged verdict."""
    full, narrowed = studies
    old = [comparison(m, p) for m, p in zip(full.p.models[:3], (0.001, 0.004, 0.3))]
    full.tables.write("comparisons_pruning", pd.DataFrame(old + [comparison("qwen2.5-coder-1.5b", 0.5)]))
    rng = np.random.default_rng(0)
    rows = []
    for c in ("scifact", "nfcorpus"):
        base = rng.uniform(0, 1, 60)
        for method, values in (("0% pruned", base), ("50% pruned", np.clip(base + rng.normal(0.004, 0.02, 60), 0, 1))):
            rows.append(pd.DataFrame({"model": "qwen2.5-coder-1.5b", "collection": c, "query_id": [str(i) for i in range(60)],
                                      "method": method, "head source": "nq", "ndcg@10": values}))
    pq = pd.concat(rows, ignore_index=True)
    got = narrowed.tables.pruning_margin(pq)
    new = got[got["model"] == "qwen2.5-coder-1.5b"].iloc[0]
    p = [new["p"], 0.001, 0.004, 0.3]
    level = analysis.holm_levels(p)[0]
    r = analysis.paired(analysis.paired_differences(pq, "50% pruned", "0% pruned"), level=0.9)
    lo, hi = r.interval(1 - 2 * analysis.ALPHA * level / analysis.ALPHA)
    assert (new["ci low (family)"], new["ci high (family)"]) == pytest.approx((lo, hi))
    assert level != analysis.holm_levels([new["p"]])[0]  # the one-model family would have given another level
    merged = narrowed.tables.comparisons("pruning", [got])
    np.testing.assert_allclose(merged["p holm"], analysis.holm([0.001, 0.004, 0.3, new["p"]]))
    assert merged["ci low (family)"].iloc[3] == new["ci low (family)"] and merged["ci low (family)"].iloc[:3].isna().all()


def test_control_verdicts_read_each_controls_set_count(studies):
    full, narrowed = studies
    controls = pd.DataFrame([{"model": m, "control": "random (layer-matched to CoRe)", "sets": n, "median": 0.3,
                              "p5": 0.2, "p95": 0.4, "distinct sets": n, "mean CoRe heads shared": 1.0,
                              "smallest p": 1 / (1 + n)} for m, n in zip(full.p.models, (1000, 12, 1000, 1000))])
    full.tables.write("controls", controls)
    positions = pd.DataFrame([{"model": m, "control": "random (layer-matched to CoRe)", "method": "CoRe-R",
                               "ndcg@10": 0.4, "percentile": 50.0, "p better": 0.5, "p worse": 0.5,
                               "p better holm": np.nan, "p worse holm": np.nan, "monte carlo error": np.nan, "verdict": ""}
                              for m in full.p.models])
    got = full.tables.write("control_positions", positions)
    assert got["verdict"].iloc[1].startswith("inconclusive (uninformative: 12 distinct sets")
    assert got["verdict"].iloc[0] == "inconclusive"


def test_the_report_says_which_run_computed_each_models_rows(studies):
    from corelib.study import report

    full, narrowed = studies
    report.record_provenance(full)
    got = report.record_provenance(narrowed)
    assert got["model"].tolist() == list(full.p.models)
    assert got["command"].tolist() == ["make reproduce PROFILE=cpu"] * 3 + ["make reproduce PROFILE=cpu MODEL=qwen2.5-coder-1.5b"]
    assert got["dtype"].tolist() == [full.p.dtype_for(m) or "float32" for m in full.p.models]  # as loaded
    assert got["dtype"].iloc[-1] == "bfloat16"
    lines = report.provenance_lines(got)
    assert len(lines) == 2 + 2 + 1  # a heading, a blank line, one line per run, a blank line
    assert lines[3].startswith("- qwen2.5-coder-1.5b: `make reproduce PROFILE=cpu MODEL=qwen2.5-coder-1.5b` at commit ")
    assert lines[2].endswith("its executed notebooks are in `./` (Table 1's: [`03_table1_rerank.ipynb`]"
                             "(./03_table1_rerank.ipynb)) (they also show the earlier rows of qwen2.5-coder-1.5b)")
    assert lines[3].endswith("its executed notebooks are in `models/qwen2.5-coder-1.5b/` (Table 1's: "
                             "[`03_table1_rerank.ipynb`](models/qwen2.5-coder-1.5b/03_table1_rerank.ipynb))")
    assert report.executed_folder('make reproduce PROFILE=cpu MODEL="a b"') == "models/a+b/"  # as the Makefile names it


def test_a_narrowed_study_without_an_ablation_model_keeps_the_committed_ablation_rows(studies):
    full, narrowed = studies
    assert full.p.models_for_ablations == ("smollm2-135m",) and narrowed.p.models_for_ablations == ()
    full.tables.write("ablation_negatives_positions",
                      pd.DataFrame([{"model": "smollm2-135m", "ablation": "1 negatives", "nDCG@10": 0.4}]))
    got = narrowed.tables.write("ablation_negatives_positions", pd.DataFrame([]))
    assert got.to_dict("records") == [{"model": "smollm2-135m", "ablation": "1 negatives", "nDCG@10": 0.4}]


def test_the_peak_test_is_one_family_of_every_model_and_the_pooled_test(studies):
    """Its intervals at the Holm level of that family (as every claim's), each model's chosen k in its label."""
    from corelib.study.tables.sweep import peak_comparisons

    full, _ = studies
    rng = np.random.default_rng(1)
    rows = []
    for m, shift in (("smollm2-135m", 0.03), ("gemma3-270m", 0.0)):
        for c in ("scifact", "nfcorpus"):
            base = rng.uniform(0, 1, 40)
            for method, k, values in (("many", 17, base), ("few", 5, np.clip(base + rng.normal(shift, 0.05, 40), 0, 1))):
                rows.append(pd.DataFrame({"model": m, "first stage": "bm25", "collection": c, "query_id": [str(i) for i in range(40)],
                                          "method": method, "head source": "nq", "k": k, "ndcg@10": values}))
    pq = pd.concat(rows, ignore_index=True)
    got = peak_comparisons(full, pq)
    assert got["model"].tolist() == ["smollm2-135m", "gemma3-270m", "pooled (a query once)"]
    assert got["a"].iloc[0] == "CoRe-R, best k < 10 (k=5, each chosen on the other half)"
    assert got["a"].iloc[2] == "CoRe-R, best k < 10 (each model's, each chosen on the other half)"
    np.testing.assert_allclose(got["p holm"], analysis.holm(got["p"]))
    levels = analysis.holm_levels(got["p"])
    for (_, row), level in zip(got.iterrows(), levels):
        part = pq if row["model"].startswith("pooled") else pq[pq["model"] == row["model"]]
        d = analysis.paired_differences(part, "few", "many", pool=row["model"].startswith("pooled"))
        assert (row["ci low (family)"], row["ci high (family)"]) == pytest.approx(analysis.paired(d).interval(1 - level))


def _record_free_study(tmp_path, monkeypatch, bm25_scores):
    """A cpu study whose committed per-query table holds BM25, Bi-encoder and CoRe-R rows of two queries, with the
    record-free runs stood in: BM25 ranks as ``bm25_scores``, the bi-encoder puts the relevant document first."""
    from types import SimpleNamespace

    from corelib.study.tables import table1

    S = Study("cpu", out=tmp_path)
    qrels = {"1": {"a": 1}, "2": {"b": 1}}
    monkeypatch.setattr(S, "collection", lambda c: SimpleNamespace(qrels=qrels))
    monkeypatch.setattr(table1, "record_free_runs", lambda study, m, c: [
        ("BM25", "", 0, bm25_scores), ("Bi-encoder", "", 0, {"1": {"a": 2.0, "b": 1.0}, "2": {"a": 1.0, "b": 2.0}})])
    rows = [("BM25", "", [1.0, 0.6309297535714575]), ("Bi-encoder", "", [0.5, 0.5]), ("CoRe-R", "nq", [0.25, 0.75])]
    pq = pd.concat([pd.DataFrame({"model": "smollm2-135m", "first stage": "bm25", "collection": "med", "query_id": ["1", "2"],
                                  "method": m, "head source": src, "k": 0, "ndcg@10": v}) for m, src, v in rows],
                   ignore_index=True)
    S.tables.write("per_query", pq)
    return S


def test_record_free_rows_are_recomputed_and_every_other_row_is_kept(tmp_path, monkeypatch):
    S = _record_free_study(tmp_path, monkeypatch, {"1": {"a": 2.0, "b": 1.0}, "2": {"a": 2.0, "b": 1.0}})
    before = S.tables.read("per_query")
    got = S.tables.refresh_record_free()["per_query"]
    assert got["ndcg@10"].tolist() == [1.0, 0.6309297535714575, 1.0, 1.0, 0.25, 0.75]  # the bi-encoder's rows only
    keep = [c for c in got if c != "ndcg@10"]
    assert got[keep].equals(before[keep]) and S.tables.read("per_query")["ndcg@10"].tolist() == got["ndcg@10"].tolist()
    prov = pd.DataFrame([{"model": "smollm2-135m", "command": "make reproduce PROFILE=cpu", "commit": "abc",
                          "date": "2026-11-28", "machine": "cpu, 2 cores", "dtype": "float32", "methods": ""}])
    S.tables.write("provenance", prov)
    from corelib.study import report

    written = report.later_provenance(S, "python -m corelib.study record-free --profile cpu", "BM25, Bi-encoder")
    assert written["methods"].fillna("").tolist() == ["", "BM25, Bi-encoder"]
    lines = report.provenance_lines(written)
    assert lines[2].startswith("- smollm2-135m (every row but those recomputed below): `make reproduce PROFILE=cpu` at commit abc")
    assert lines[3].startswith("- BM25, Bi-encoder rows of smollm2-135m: `python -m corelib.study record-free --profile cpu`")
    assert report.later_provenance(S, "again", "BM25, Bi-encoder")["command"].tolist()[-1] == "again"
    assert len(S.tables.read("provenance")) == 2  # the earlier refresh's rows replaced
    table = report.later_provenance(S, "python -m corelib.study practitioner-cost --profile cpu", "table practitioner_cost")
    assert report.provenance_lines(table)[4].startswith("- table practitioner_cost (smollm2-135m): `python -m corelib.study practitioner-cost")


def test_a_record_free_refresh_refuses_other_first_stage_candidates(tmp_path, monkeypatch):
    S = _record_free_study(tmp_path, monkeypatch, {"1": {"a": 1.0, "b": 2.0}, "2": {"a": 2.0, "b": 1.0}})
    with pytest.raises(ValueError, match="first stage's nDCG@10 changed on 1 queries"):
        S.tables.refresh_record_free()
    assert S.tables.read("per_query")["ndcg@10"].iloc[2] == 0.5  # nothing written


def test_the_scaling_view_of_a_narrowed_study_keeps_the_others_committed_rows(studies, monkeypatch):
    """A narrowed run counts the parameters of its own models only: the other models' files need not be there
    (a run of the smaller models never installs the 1.5B's wheels), and their committed rows stay as they were."""
    full, narrowed = studies
    means = {"BM25": 0.4, "Dense": np.nan, "Bi-encoder": 0.5, "ICR": 0.41, "QR-R": 0.42, "CoRe-R": 0.43,
             "NIAH-R": 0.42}
    avg = pd.DataFrame([{"model": m, "first stage": "bm25", "collections": 7, "queries": 10, **means}
                        for m in full.p.models])
    for s in (full, narrowed):
        s.tables.write("table1_average", avg.reindex(columns=schema.columns("table1_average")))
    sizes = dict(zip(full.p.models, (135e6, 268e6, 494e6, 1.54e9)))
    monkeypatch.setattr(Study, "parameter_count", lambda self, m: sizes[m])
    before = full.tables.scaling()
    asked = []
    monkeypatch.setattr(Study, "parameter_count", lambda self, m: asked.append(m) or 2e9)
    after = narrowed.tables.scaling()
    assert asked == ["qwen2.5-coder-1.5b"]  # the others' sizes are read from their committed rows
    assert after.set_index("model").loc["smollm2-135m", "parameters"] == 135e6
    assert after.set_index("model").loc["qwen2.5-coder-1.5b", "parameters"] == 2e9 and len(after) == len(before) == 4


def test_the_parameter_count_reads_the_config_outside_the_meta_device(monkeypatch):
    """A model's first config read may convert its GGUF files, which loads weights: never on the meta device."""
    import torch
    from transformers import LlamaConfig

    S = Study("smoke")

    class Spec:
        def config(self):
            assert torch.empty(0).device.type != "meta", "the config is read on the meta device"
            return LlamaConfig(vocab_size=64, hidden_size=16, intermediate_size=32, num_hidden_layers=2,
                               num_attention_heads=2, num_key_value_heads=2)

    monkeypatch.setattr(S, "spec", lambda m: Spec())
    assert S.parameter_count("tiny") == 64 * 16 + 2 * (4 * 16 * 16 + 3 * 16 * 32 + 2 * 16) + 16
