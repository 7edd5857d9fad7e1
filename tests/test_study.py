import json
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from corelib.heads import in_domain_samples
from corelib.records import QueryRecord, RecordStore, header_metadata
from corelib.scoring import record_run
from corelib.study import Study, kept_layers, profile
from corelib.study.tables import length_bias, sweep_curve, with_negatives

REPO = Path(__file__).resolve().parents[1]


def rec(qid, token_scores, bounds, mass=None, positive=None, doc_ids=None):
    L, H, _ = token_scores.shape
    n = len(bounds) - 1
    mass = mass if mass is not None else torch.zeros(L, H, n)
    return QueryRecord(qid, doc_ids or [f"d{i}" for i in range(n)], torch.tensor(bounds), token_scores, mass, None, True, 5,
                       positive)


def test_profiles_are_fixed_and_named():
    cpu = profile("cpu")
    assert cpu.queries_for("smollm2-135m") == 300 and cpu.queries_for("gemma3-270m") == 300
    assert cpu.queries_for("qwen2.5-coder-0.5b", "scifact") == 30
    assert cpu.queries_for("smollm2-135m", "xquad-r/de") == 50 and cpu.queries_for("gemma3-270m", "xquad-r/de") == 30
    assert (cpu.top_k, cpu.words, cpu.negatives, cpu.positions, cpu.detection_samples) == (20, 100, 19, 2, 100)
    assert cpu.models_for_ablations == ("smollm2-135m",)
    assert cpu.queries_for("qwen2.5-coder-1.5b", "scifact", 300) == 64 and cpu.detection_for("qwen2.5-coder-1.5b") == 100
    assert cpu.queries_for("qwen2.5-coder-1.5b", "npl", 93) is None  # a small collection whole
    assert cpu.detection_for("smollm2-135m") == 100 and cpu.queries_for("qwen2.5-coder-1.5b", "xquad-r/es") == 10
    quick = profile("quick")
    assert quick.models == ("smollm2-135m",) and (quick.top_k, quick.words) == (cpu.top_k, cpu.words)  # shares records
    assert profile("smoke", queries=2).queries == 2
    with pytest.raises(ValueError, match="unknown profile"):
        profile("huge")
    with pytest.raises(ValueError, match=r"\['gemma3-270m'\] not in profile 'smoke'"):
        Study("smoke", models=["gemma3-270m"])


def test_a_study_states_each_models_own_sample_and_dtype():
    """A run's summary (the notebooks' Study, the banner, the report) gives each model's own sample where the
    models' samples differ, never only the profile's default."""
    cpu = profile("cpu", dtype_by_model=(("qwen2.5-coder-1.5b", "bfloat16"),))
    text = cpu.summary()
    assert "per model: smollm2-135m up to 300 queries/collection; gemma3-270m up to 300" in text
    assert "qwen2.5-coder-0.5b up to 30 queries/collection;" in text
    assert text.endswith("qwen2.5-coder-1.5b up to 64 queries/collection (every query of a collection with at most "
                         "100), bfloat16 records")
    assert text.count("detection 100 NQ queries x 2 positions") == 1  # shared: said once
    assert cpu.summary(["qwen2.5-coder-0.5b"]) == cpu.sizes("qwen2.5-coder-0.5b")  # one model: its own sizes
    assert repr(Study(cpu, models=["gemma3-270m"])).endswith("up to 300 queries/collection; detection 100 NQ queries x "
                                                            "2 positions, 19 negatives, t=0.001; NIAH 4 needles x 2 "
                                                            "lengths [1000, 2000] x 5 depths in ADI (and at the "
                                                            "prompts' length, [3500]))")


def test_paper_profile_asks_for_what_exists():
    import ir_datasets

    p = profile("paper")
    assert p.negatives <= 29  # the shipped NQ detection set has 29 negatives per query
    from corelib.data import IR_DATASETS_IDS

    for name in p.collections:
        assert IR_DATASETS_IDS.get(name, f"beir/{name}") in ir_datasets.registry, name


def test_kept_layers_follow_the_authors_int():
    assert [kept_layers(30, p) for p in (0.0, 0.3, 0.5, 0.7)] == [30, 21, 15, 9]
    assert kept_layers(18, 0.7) == 5 and kept_layers(24, 0.3) == 16  # int(), not ceil()
    with pytest.raises(ValueError):
        kept_layers(30, 1.0)


def test_sweep_equals_scoring_each_prefix():
    from corelib.evaluate import evaluate_run

    g = torch.Generator().manual_seed(0)
    recs = [rec(f"q{i}", torch.randn(2, 2, 9, generator=g), [0, 3, 6, 9]) for i in range(3)]
    qrels = {f"q{i}": {"d1": 1} for i in range(3)}
    order = [(1, 1), (0, 0), (1, 0), (0, 1)]
    curve = sweep_curve(recs, order, qrels)
    for k in range(1, 5):
        assert curve[k - 1] == pytest.approx(evaluate_run(record_run(recs, order[:k]), qrels)["ndcg@10"])


def test_with_negatives_draws_them_at_random_and_keeps_the_positive_first():
    mass = torch.arange(20.0).view(1, 1, 20)
    r = rec("q", torch.zeros(1, 1, 1), [0] * 20 + [1], mass=mass, positive=15)
    cut = with_negatives([r], 3, seed=0)[0]
    assert cut.positive == 0 and cut.doc_ids[0] == "d15" and len(cut.doc_ids) == 4
    assert cut.doc_ids[1:] != ["d0", "d1", "d2"]  # not the first three in prompt order
    assert with_negatives([r], 3, seed=0)[0].doc_ids == cut.doc_ids  # seeded


def test_length_bias_detects_a_length_preference():
    ts = torch.ones(1, 1, 10)  # every token equal: scores grow with length
    out = length_bias([rec("q", ts, [0, 1, 3, 10])])
    assert out["spearman(score, length)"] == pytest.approx(1.0)
    assert out["top-1 length / mean length"] == pytest.approx(7 / (10 / 3))


def test_in_domain_samples_contrast_each_relevant_candidate_with_the_non_relevant_ones():
    mass = torch.arange(6.0).view(1, 1, 6)
    r = rec("q", torch.zeros(1, 1, 1), [0] * 6 + [1], mass=mass, doc_ids=["a", "b", "c", "d", "e", "f"])
    qrels = {"q": {"b": 1, "e": 2, "c": 0}}  # c judged non-relevant, a/d/f unjudged (= non-relevant)
    m, pos, slots = in_domain_samples([r], qrels)
    assert slots == [1, 4] and pos.tolist() == [0, 0]
    assert m[0, 0, 0].tolist() == [1.0, 0.0, 2.0, 3.0, 5.0]  # b against a, c, d, f (not e)
    assert m[1, 0, 0].tolist() == [4.0, 0.0, 2.0, 3.0, 5.0]
    near, _, _ = in_domain_samples([r], qrels, nearest=2)
    assert near[0, 0, 0, :3].tolist() == [1.0, 0.0, 2.0] and torch.isinf(near[0, 0, 0, 3:]).all()


def test_leave_one_collection_out_never_uses_the_held_out_queries(monkeypatch):
    S = Study("smoke")
    seen = []

    def fake_records(model, collection, calibrate=True):
        seen.append(collection)
        r = rec(f"{collection}-q", torch.rand(1, 2, 3), [0, 1, 2, 3], mass=torch.rand(1, 2, 3), doc_ids=["x", "y", "z"])
        return [r]

    class Coll:
        def __init__(self, name):
            self.qrels = {f"{name}-q": {"y": 1}}

    monkeypatch.setattr(S, "records", fake_records)
    monkeypatch.setattr(S, "collection", lambda name: Coll(name))
    S.head_scores("smollm2-135m", "core", source="in-domain", exclude="scifact")
    assert seen == ["cranfield"]  # scifact's records never enter its own detection
    seen.clear()
    S.head_scores("smollm2-135m", "core", source="in-domain", exclude="cranfield")
    assert seen == ["scifact"]


def test_control_sets_are_uniform_and_layer_matched(monkeypatch):
    S = Study("smoke")

    class Spec:
        num_layers, num_heads = 6, 4

    monkeypatch.setattr(S, "spec", lambda m: Spec())
    monkeypatch.setattr(S, "heads", lambda m, method, k=None, *a, **kw: [(2, 0), (2, 1), (4, 3)])
    sets = S.tables.control_sets("m", n=100, k=3)
    uniform, matched = sets["random (uniform)"], sets["random (layer-matched to CoRe)"]
    assert len(uniform) == 100 and all(len(set(s)) == 3 for s in uniform)
    assert len({l for s in uniform for l, _ in s}) == 6  # every layer drawn somewhere
    # C(4,2) * C(4,1) = 24 distinct layer-matched sets: all enumerated
    assert len(matched) == 24 and len({tuple(sorted(s)) for s in matched}) == 24
    assert all(sorted(l for l, _ in s) == [2, 2, 4] for s in matched)
    # without CoRe's heads: C(2,2) * C(3,1) = 3 sets, none sharing a head with CoRe's, and the counts say so
    disjoint = sets["random (layer-matched, no CoRe head)"]
    assert len(disjoint) == 3 and not any({(2, 0), (2, 1), (4, 3)} & set(s) for s in disjoint)
    assert all(sorted(l for l, _ in s) == [2, 2, 4] for s in disjoint)
    counts = S.tables.control_counts("m", n=100, k=3)
    assert counts == {"random (uniform)": 2024, "random (layer-matched to CoRe)": 24,
                      "random (layer-matched, no CoRe head)": 3}
    # more distinct sets than drawn: n random ones, each matched and disjoint
    many = S.tables.control_sets("m", n=2, k=3)["random (layer-matched, no CoRe head)"]
    assert len(many) == 2


def test_a_control_too_small_to_reach_alpha_is_marked_uninformative():
    from corelib.study.analysis import control_verdict

    assert control_verdict(1.0, 1.0, sets=3) == ("inconclusive (uninformative: 3 distinct sets, smallest p 0.25, "
                                                 "0.25 after Holm over 1 models)")
    # gemma3's 36 layer-matched sets: 1/37 < 0.05 alone, but Holm over 4 models cannot go below 4/37
    assert control_verdict(0.11, 1.0, sets=36, family=4).startswith("inconclusive (uninformative: 36 distinct sets")
    assert control_verdict(0.11, 1.0, sets=36, family=1) == "inconclusive"
    assert control_verdict(1.0, 1.0, sets=1000) == "inconclusive"
    assert control_verdict(0.001, 1.0, sets=1000) == "supported"


def test_a_control_verdict_a_redraw_could_flip_says_so():
    """smollm2's CoRe-R against uniform sets: Holm p 0.0509 over 1,000 sets, within two Monte Carlo errors of 0.05."""
    from corelib.study.analysis import control_verdict, monte_carlo_error

    err = monte_carlo_error(0.012987, 0.99, 0.0509, 1.0, 1000)
    assert 0.012 < err < 0.016  # sqrt(0.013 x 0.987 / 1000) x (0.0509 / 0.013)
    assert control_verdict(0.0509, 1.0, sets=1000, family=4, mc_error=err).startswith(
        "inconclusive (a redraw of the sets could flip it: Monte Carlo error 0.014")
    assert control_verdict(0.001, 1.0, sets=1000, family=4, mc_error=monte_carlo_error(0.00025, 1, 0.001, 1, 1000)) == "supported"


@pytest.mark.shared_data
def test_warm_caches_every_step_and_resumes_without_forwards(tmp_path, tokenizer, shared_data):
    from corelib.study import warm
    from tiny_models import tiny_model

    lm = tiny_model("llama", tokenizer)
    calls = []
    lm.backbone.register_forward_pre_hook(lambda *a: calls.append(1))
    p = profile("smoke", niah_needles=None, models=("tiny-llama",), collections=("scifact",), multilingual=("xquad-r/de",), queries=2,
                detection_samples=2, negatives=3)

    def study():
        S = Study(p, data=shared_data, out=tmp_path / "results", store=RecordStore(tmp_path / "records"))
        S.use_model("tiny-llama", lm)
        return S

    steps = ["NQ detection", "scifact", "xquad-r/de", "calibrated NQ detection"]
    before = study().pending()
    assert list(before.step) == steps and list(before.needed) == [4, 2, 2, 4] and list(before.missing) == [4, 2, 2, 4]
    assert before["estimate (h)"].isna().all()  # nothing cached, so nothing timed
    assert calls == []  # pending runs no forward
    study().warm()
    # detection: 2 queries x 2 positions, one forward each; each collection: 2 calibrated records,
    # one packed forward each (the shared document prefix, then the query and the N/A suffixes);
    # then the calibrated detection records of notebook 9's ablation (the model is an ablation model)
    assert len(calls) == 2 * 2 + 2 * 2 + 2 * 2
    assert len(list((tmp_path / "records").rglob("*.safetensors"))) == 2 * 2 + 2 + 2 + 2 * 2
    calls.clear()
    study().warm()  # a second run (or a resumed one) reads everything from the cache
    assert calls == []
    after = study().pending()
    assert list(after.missing) == [0, 0, 0, 0] and list(after.cached) == [4, 2, 2, 4] and (after["s each (median)"] > 0).all()
    # one lost record: pending names its step and estimates it at the step's median time
    next((tmp_path / "records").rglob("scifact/*.safetensors")).unlink()
    gap = study().pending().set_index("step").loc["scifact"]
    assert gap.missing == 1 and gap["estimate (h)"] == pytest.approx(gap["s each (median)"] / 3600)
    assert gap["timed on"] == "this step"
    for f in (tmp_path / "records").rglob("xquad-r__de/*.safetensors"):  # a step with nothing cached is
        f.unlink()  # estimated at the median time of the model's other calibrated steps
    gap = study().pending().set_index("step").loc["xquad-r/de"]
    assert gap.missing == 2 and gap["timed on"] == "calibrated steps" and gap["estimate (h)"] > 0
    for f in (tmp_path / "records").rglob("*.safetensors"):  # with no calibrated record left, of all other steps
        if json.loads(header_metadata(f)["fields"])["calibrate"]:
            f.unlink()
    left = study().pending().set_index("step")
    assert left.loc["NQ detection", "timed on"] == "this step"
    assert (left.loc[["scifact", "xquad-r/de"], "timed on"] == "other steps").all()
    # where one machine's cost table rows time both kinds, the other kind's pace here is scaled by their ratio
    (tmp_path / "results").mkdir(exist_ok=True)
    pd.DataFrame([{"model": "tiny-llama", "kind": kind, "dtype": "default", "records timed": 10,
                   "seconds each (median)": s, "machine": "2 CPU cores (x)", "measured": "2026-12-02"}
                  for kind, s in ((warm.CALIBRATED, 3.0), (warm.UNCALIBRATED, 2.0))]
                 ).to_csv(tmp_path / "results" / warm.COSTS_FILE, index=False)
    scaled = study().pending().set_index("step")
    assert (scaled.loc[["scifact", "xquad-r/de"], "timed on"] == "other steps x 1.50 (cost table)").all()
    assert scaled.loc["scifact", "s each (median)"] == pytest.approx(1.5 * left.loc["scifact", "s each (median)"])
    assert calls == []


def test_pending_command_lists_every_warm_step_without_loading_a_model(shared_data, capsys, monkeypatch):
    from corelib.models import ModelSpec
    from corelib.study.__main__ import main

    monkeypatch.setattr(ModelSpec, "load", lambda self: pytest.fail("pending loaded a model"))
    assert main(["pending", "--profile", "smoke", "--data", str(shared_data)]) == 0
    out = capsys.readouterr().out
    for step in ("NQ detection", "scifact", "cranfield", "xquad-r/de", "calibrated NQ detection", "needle trials",
                 "needle trials (prompt length)"):
        assert re.search(rf"smollm2-135m +{re.escape(step)} +\d", out), step
    assert "profile smoke" in out and ("every record" in out or "not cached yet" in out)


def test_a_cold_cache_is_estimated_from_the_committed_cost_table(shared_data, tmp_path, monkeypatch):
    """With no record cached, ``pending`` estimates each record step from results/record_costs.csv (per model,
    kind and dtype) and says so; written by ``record-costs`` from the cached records."""
    from corelib.study import warm

    monkeypatch.setenv("CORELIB_CACHE", str(tmp_path / "empty-cache"))
    S = Study("smoke", data=shared_data, out=tmp_path)
    before = warm.pending(S)
    assert before.loc[before["step"] == "scifact", "estimate (h)"].isna().all()
    pd.DataFrame([{"model": "smollm2-135m", "kind": warm.CALIBRATED, "dtype": "default", "records timed": 40,
                   "seconds each (median)": 36.0, "machine": "2 CPU cores (x)", "measured": "2026-12-02"},
                  {"model": "smollm2-135m", "kind": warm.UNCALIBRATED, "dtype": "default", "records timed": 40,
                   "seconds each (median)": 18.0, "machine": "2 CPU cores (x)", "measured": "2026-12-02"},
                  {"model": "smollm2-135m", "kind": "needle trial (prompt length)", "dtype": "default",
                   "records timed": 10, "seconds each (median)": 50.0, "machine": "2 CPU cores (x)",
                   "measured": "2026-12-02"}]
                 ).to_csv(tmp_path / warm.COSTS_FILE, index=False)
    after = warm.pending(S).set_index("step")
    n = after.loc["scifact", "missing"]
    assert after.loc["scifact", "estimate (h)"] == pytest.approx(n * 36.0 / 3600)
    assert after.loc["NQ detection", "estimate (h)"] == pytest.approx(after.loc["NQ detection", "missing"] * 18.0 / 3600)
    assert tuple(after.loc["scifact", ["timed on", "cost machine"]]) == ("cost table (2026-12-02)", "2 CPU cores (x)")
    assert after.loc["NQ detection", "cost machine"] == "2 CPU cores (x)"
    # a needle trial decodes: its grid's own row, never a record's time; a grid with no row has no estimate
    trials = after.loc["needle trials (prompt length)"]
    assert trials["estimate (h)"] == pytest.approx(trials["missing"] * 50.0 / 3600)
    assert np.isnan(after.loc["needle trials", "estimate (h)"])
    # the summary sums what is timed and names the untimed trials apart, instead of dropping the estimate
    untimed = int(after.loc["needle trials", "missing"])
    timed_h = after["estimate (h)"].sum()
    summary = warm.left_summary(after.reset_index())
    span = f"~{timed_h:.1f} h" if timed_h >= 1 else f"~{max(1, round(60 * timed_h))} min"
    assert summary == (f"smollm2-135m {int(after['missing'].sum())} ({span} for "
                       f"{int(after['missing'].sum()) - untimed} of them; {untimed} not timed yet; cost table timed "
                       "on 2 CPU cores (x), not this machine)")
    monkeypatch.setattr(warm, "this_machine", lambda: "2 CPU cores (x)")  # rows timed here: nothing to add
    assert warm.left_summary(after.reset_index()) == summary.replace("; cost table timed on 2 CPU cores (x), not this machine", "")
    # the table written from an empty cache has no row, and merging keeps the committed ones
    path, table = warm.write_record_costs(S)
    assert len(table) == 3 and path == tmp_path / warm.COSTS_FILE


def test_the_cost_table_keeps_a_row_per_machine_and_prefers_this_ones(shared_data, tmp_path, monkeypatch):
    from corelib.study import warm

    monkeypatch.setenv("CORELIB_CACHE", str(tmp_path / "empty-cache"))
    S = Study("smoke", data=shared_data, out=tmp_path)
    row = {"model": "smollm2-135m", "kind": warm.CALIBRATED, "dtype": "default", "records timed": 40}
    pd.DataFrame([{**row, "seconds each (median)": 2.0, "machine": "2 CPU cores (a)", "measured": "2026-12-06"},
                  {**row, "seconds each (median)": 4.0, "machine": "2 CPU cores (b)", "measured": "2026-12-01"},
                  {**row, "seconds each (median)": 8.0, "machine": "2 CPU cores (c)", "measured": "2026-11-01"}]
                 ).to_csv(tmp_path / warm.COSTS_FILE, index=False)
    key = ("smollm2-135m", warm.CALIBRATED, "default")
    monkeypatch.setattr(warm, "this_machine", lambda: "2 CPU cores (b)")
    assert warm.committed_costs(S)[key] == warm.Cost(4.0, "2 CPU cores (b)", "2026-12-01")  # this machine's, though older
    monkeypatch.setattr(warm, "this_machine", lambda: "2 CPU cores (z)")
    assert warm.committed_costs(S)[key] == warm.Cost(2.0, "2 CPU cores (a)", "2026-12-06")  # else the newest
    # rows measured now replace this machine's row only; the other machines' stay
    measured = pd.DataFrame([{**row, "seconds each (median)": 5.0, "machine": "2 CPU cores (b)", "measured": "2026-12-07"}])
    monkeypatch.setattr(warm, "record_costs", lambda *a, **k: measured)
    _, table = warm.write_record_costs(S)
    assert dict(zip(table["machine"], table["seconds each (median)"])) == {
        "2 CPU cores (a)": 2.0, "2 CPU cores (b)": 5.0, "2 CPU cores (c)": 8.0}


def test_warm_command_names_a_model_outside_the_profile(capsys):
    from corelib.study.__main__ import main

    assert main(["warm", "--profile", "smoke", "--model", "gemma3-270m"]) == 2
    assert "['gemma3-270m'] not in profile 'smoke' (its models: smollm2-135m)" in capsys.readouterr().err


def test_claims_at_a_glance_is_the_verdicts_as_a_matrix_with_pooled_last():
    from corelib.study.report import at_a_glance

    v = pd.DataFrame([
        ("CoRe-R beats ICR", "pooled (a query once)", "+1.00 [+0.10, +1.90]", "supported"),
        ("CoRe-R beats ICR", "m1", "+2.00 [+0.50, +3.50]", "supported"),
        ("CoRe-R beats ICR", "m2", "-0.50 [-1.50, +0.50]", "inconclusive"),
        ("top heads in middle layers", "m2", "2 of 8 in the middle third", "inconclusive"),
    ], columns=["claim", "model", "brief", "verdict"])
    g = at_a_glance(v)
    assert list(g.columns) == ["claim", "m1", "m2", "pooled (a query once)"]
    assert list(g["claim"]) == ["CoRe-R beats ICR", "top heads in middle layers"]
    assert g.iloc[0].tolist()[1:] == ["+2.00 [+0.50, +3.50]: supported", "-0.50 [-1.50, +0.50]: inconclusive",
                                      "+1.00 [+0.10, +1.90]: supported"]
    assert g.iloc[1].tolist()[1:] == ["-", "2 of 8 in the middle third: inconclusive", "-"]  # not tested: '-'


def test_a_pruning_loss_beyond_the_margin_is_contradicted_and_the_report_shows_that_test(tmp_path):
    """Either one-sided test can decide a margin claim, so the table keeps both and the report prints both."""
    from corelib.study.report.verdicts import _fmt_comparison
    from corelib.study.tables.pruning import pruning_margin

    rng = np.random.default_rng(0)
    rows = []
    for c in ("x", "y"):
        for q in range(30):
            base = rng.uniform(0.3, 0.8)
            rows += [("m", c, f"{c}{q}", "0% pruned", base), ("m", c, f"{c}{q}", "50% pruned", base - 0.05 + rng.normal(0, 0.01))]
    pq = pd.DataFrame(rows, columns=["model", "collection", "query_id", "method", "ndcg@10"])
    r = pruning_margin(Study("smoke", out=tmp_path), pq).iloc[0]  # a 5-point loss against a 0.5-point margin
    assert r["verdict"] == "contradicted" and r["p holm"] > 0.5 and r["p holm inferior"] < 0.05
    text = _fmt_comparison(r)
    assert "p (loss >= 0.5) = 1" in text and "p (loss <= 0.5) = " in text
    old = r.drop(["p inferior", "p holm inferior"])  # a table written before the second test was kept
    assert "p (loss <= 0.5)" not in _fmt_comparison(old)


def test_table1_averages_collections_equally(tmp_path):
    S = Study("smoke", out=tmp_path)
    rows = []
    for c, n in (("x", 1), ("y", 3)):
        for q in range(n):
            for method, v in (("BM25", 0.1), ("ICR", 0.2), ("QR-R", 0.3), ("CoRe-R", 0.4 if c == "x" else 0.0)):
                rows.append({"model": "m", "first stage": "bm25", "collection": c, "query_id": str(q), "method": method,
                             "head source": {"BM25": "", "ICR": "all"}.get(method, "nq"), "k": 8, "ndcg@10": v})
    table, avg = S.tables.table1(pd.DataFrame(rows))
    assert avg.set_index("model").loc["m", "CoRe-R"] == pytest.approx(0.2)  # (0.4 + 0.0) / 2, not weighted by queries
    assert (tmp_path / "smoke" / "tables" / "table1_average.csv").is_file()
    assert list(S.tables.read("table1").columns) == S.tables.columns("table1")
    # the models keep the per-query table's order (the profile's, by size), not the alphabet's
    both = pd.concat([pd.DataFrame(rows).assign(model="z-small"), pd.DataFrame(rows).assign(model="a-large")])
    table, avg = S.tables.table1(both)
    assert list(avg["model"]) == ["z-small", "a-large"] and list(dict.fromkeys(table["model"])) == ["z-small", "a-large"]


@pytest.mark.shared_data
def test_explorer_updates_from_cached_records_only(tmp_path, tokenizer, shared_data, monkeypatch):
    from tiny_models import tiny_model

    from corelib.study.explorer import explore
    from corelib.study.tables.sweep import sweep_curve

    lm = tiny_model("llama", tokenizer)
    p = profile("smoke", niah_needles=None, models=("tiny-llama",), queries=2, detection_samples=2, negatives=3)
    S = Study(p, data=shared_data, out=tmp_path, store=RecordStore(tmp_path / "records", memory_mb=256))
    S.use_model("tiny-llama", lm)
    S.warm(multilingual=False)
    calls = []
    lm.backbone.register_forward_pre_hook(lambda *a: calls.append(1))
    table, curve = explore(S, "tiny-llama", "core", 3, 0.01, "scifact")
    assert list(table.index) == ["scifact", "cranfield", "mean"] and "core top-3" in table.columns
    assert len(curve) == 16 and calls == []
    assert table.loc["mean", "ICR"] == pytest.approx(table.loc[["scifact", "cranfield"], "ICR"].mean())
    # an Explorer computes a head order's curve once: another k or collection reuses it, a new order does not
    from corelib.study import explorer as module

    curves = []
    monkeypatch.setattr(module, "sweep_curve", lambda *a: curves.append(1) or sweep_curve(*a))
    E = module.Explorer(S)
    for k, t, c in [(3, 0.01, "scifact"), (5, 0.01, "scifact"), (3, 0.01, None), (3, 0.01, "cranfield")]:
        table, curve = E.explore("tiny-llama", "core", k, t, c)
        fresh = explore(S, "tiny-llama", "core", k, t, c)
        pd.testing.assert_frame_equal(table, fresh[0])
        pd.testing.assert_series_equal(curve, fresh[1])
    n = len(curves)
    E.explore("tiny-llama", "core", 2, 0.01)
    assert len(curves) == n  # every curve of this order is kept
    E.explore("tiny-llama", "qr", 2, 0.01), E.explore("tiny-llama", "qr", 2, 1.0)
    assert len(curves) == n + 2  # QR's order ignores the temperature: one curve per collection, once
    assert calls == []


def test_clean_outputs_drops_progress_bars_only(tmp_path):
    import nbformat

    from corelib.study.__main__ import clean_outputs

    nb = nbformat.v4.new_notebook()
    cell = nbformat.v4.new_code_cell("x")
    cell.outputs = [nbformat.v4.new_output("stream", name="stderr", text="\rbar: 10%|#   | 1/10\rbar: 100%"),
                    nbformat.v4.new_output("stream", name="stderr", text="WARNING something real\n"),
                    nbformat.v4.new_output("display_data", data={"application/vnd.jupyter.widget-view+json": {"model_id": "a"},
                                                                 "text/plain": "HBox()"}),
                    nbformat.v4.new_output("execute_result", data={"text/plain": "42"}, execution_count=1)]
    nb.cells.append(cell)
    path = tmp_path / "n.ipynb"
    nbformat.write(nb, path)
    assert clean_outputs(path) == 2
    kept = nbformat.read(path, as_version=4).cells[0].outputs
    assert [o.get("text", o.get("data", {}).get("text/plain")) for o in kept] == ["WARNING something real\n", "42"]


def test_table1_compares_attention_with_the_first_stage_that_made_its_candidates(tmp_path):
    bm25 = Study("smoke", out=tmp_path).tables.table1_pairs(("nq", "in-domain"))
    dense = Study(profile("smoke", first_stage="dense"), out=tmp_path)
    pairs = dense.tables.table1_pairs(("nq",))
    assert ("ICR", "BM25", "all") in bm25 and not any("Dense" in p for p in bm25)
    assert ("CoRe-R", "QR-R", "in-domain") in bm25
    assert ("ICR", "Dense", "all") in pairs and ("CoRe-R", "Dense", "nq") in pairs and ("ICR", "BM25", "all") not in pairs
    # the two first stages, each its own top k for the same queries: a query-level paired test
    rows = [{"model": "m", "first stage": "dense", "collection": c, "query_id": str(q), "method": method,
             "head source": "", "k": 0, "ndcg@10": v + 0.1 * q}
            for c in ("x", "y") for q in range(12) for method, v in (("BM25", 0.2), ("Dense", 0.3))]
    cmp = dense.tables.compare(pd.DataFrame(rows), [p for p in pairs if p[0] == "Dense"])
    assert list(cmp["claim"]) == ["Dense beats BM25"]
    assert cmp["difference"].iloc[0] == pytest.approx(10.0) and cmp["verdict"].iloc[0] == "supported"


def test_a_profile_without_multilingual_sets_skips_their_notebook_and_never_substitutes_others(shared_data, capsys, tmp_path):
    """cpu-dense has no multilingual collections: notebook 08 is skipped (it once re-scored the English
    collections under "multilingual:" claims, because an empty list fell back to the profile's collections)."""
    from corelib.study import Study, profile
    from corelib.study.__main__ import main

    assert profile("cpu-dense").skipped_notebooks() == {"08_table2_multilingual": "profile cpu-dense has no multilingual collections",
                                                        "11_candidate_order": "profile cpu-dense runs no candidate-order remedies"}
    assert profile("quick").skipped_notebooks() == {"11_candidate_order": "profile quick runs no candidate-order remedies"}
    assert profile("cpu").skipped_notebooks() == {}
    assert main(["notebooks", "--profile", "cpu-dense", "notebooks/07_fig3_layer_pruning.ipynb",
                 "notebooks/08_table2_multilingual.ipynb"]) == 0
    out, err = capsys.readouterr()
    assert out.split() == ["notebooks/07_fig3_layer_pruning.ipynb"] and "skip notebooks/08_table2_multilingual.ipynb" in err
    # FROM=08 resumes a stopped reproduce: earlier notebooks are left out, without a skip message
    assert main(["notebooks", "--profile", "quick", "--from", "08", "notebooks/07_fig3_layer_pruning.ipynb",
                 "notebooks/08_table2_multilingual.ipynb", "notebooks/10_report.ipynb"]) == 0
    out, err = capsys.readouterr()
    assert out.split() == ["notebooks/08_table2_multilingual.ipynb", "notebooks/10_report.ipynb"] and not err
    assert main(["notebooks", "--profile", "quick", "--from", "5", "notebooks/07_fig3_layer_pruning.ipynb"]) == 2
    assert "no notebook's name sorts at or after --from '5'" in capsys.readouterr().err
    # ONLY=08: that notebook alone
    assert main(["notebooks", "--profile", "quick", "--only", "08", "notebooks/07_fig3_layer_pruning.ipynb",
                 "notebooks/08_table2_multilingual.ipynb", "notebooks/10_report.ipynb"]) == 0
    assert capsys.readouterr().out.split() == ["notebooks/08_table2_multilingual.ipynb"]
    assert main(["notebooks", "--profile", "quick", "--only", "11", "notebooks/07_fig3_layer_pruning.ipynb"]) == 2
    assert "no notebook's name starts with --only '11'" in capsys.readouterr().err
    S = Study("cpu-dense", data=shared_data, out=tmp_path)
    with pytest.raises(ValueError, match="no collections to evaluate for 'per_query_multilingual' in profile cpu-dense"):
        S.tables.per_query(S.p.multilingual, name="per_query_multilingual")


def test_report_tables_print_each_column_at_its_precision():
    """Points with 2 decimals, percentiles with 1, whole-number counts without decimals, nDCG@10 with 4 even
    when every value happens to be whole (a perfect ranking), NaN as '-', parameter counts grouped."""
    from corelib.study.report import markdown_table

    df = pd.DataFrame({"sets": [1000.0, 1000.0], "CoRe and QR share": [6.0, 3.142857], "percentile": [78.3, 5.0],
                       "CoRe-R - ICR": [3.04691, -0.1239], "ci low": [-0.0927, np.nan], "Dense": [1.0, 1.0],
                       "ndcg@10": [0.45126, 0.5], "parameters": [134515008.0, 1.5e9]})
    lines = markdown_table(df).splitlines()
    assert lines[0] == "| " + " | ".join(df.columns) + " |"
    assert lines[2] == "| 1,000 | 6.0000 | 78.3 | 3.05 | -0.09 | 1.0000 | 0.4513 | 134,515,008 |"
    assert lines[3] == "| 1,000 | 3.1429 | 5.0 | -0.12 | - | 1.0000 | 0.5000 | 1,500,000,000 |"


def test_models_with_sliding_window_layers_are_named_with_their_global_layers():
    """gemma3 mixes sliding-window and global layers: the report says which layers see the whole prompt, the
    controls get those heads as a set; a model whose layers are all global gets no note."""
    from types import SimpleNamespace

    from tiny_models import CONFIGS

    from corelib.architecture import global_attention_heads, global_attention_layers
    from corelib.study.report import attention_note

    def spec(arch):
        config = CONFIGS[arch](100)
        return SimpleNamespace(config=lambda: config, num_layers=config.num_hidden_layers, num_heads=config.num_attention_heads)

    gemma, qwen = spec("gemma3"), spec("qwen2")  # gemma: sliding, full, sliding, full
    assert global_attention_layers(gemma) == [1, 3] and len(global_attention_heads(gemma)) == 2 * 4
    note = attention_note("tiny-gemma3", gemma)
    assert note.startswith("tiny-gemma3: 2 of its 4 layers attend only to the last 24 tokens") and "[1, 3]" in note
    assert global_attention_layers(qwen) is None and attention_note("tiny-qwen2", qwen) is None


def test_pruning_cost_is_measured_once_per_model_and_key(monkeypatch, tmp_path):
    """A stopped `make reproduce` keeps the models it timed: the rows are cached under the cache root,
    keyed by what sets them, and a different setting (here the repeats) measures again."""
    from corelib.study import timing

    monkeypatch.setenv("CORELIB_CACHE", str(tmp_path))
    S = Study("smoke", out=tmp_path / "results")

    class Spec:
        num_layers, num_heads = 10, 2

    calls, dtypes = [], []

    def fake_measure(m, config, tokens, repeats, data, layers=None, dtype=None):
        calls.append((config, layers))
        dtypes.append(dtype)
        kept = layers or 10
        return {"model": m, "config": config, "tokens": tokens, "seconds": 2.0 * kept / 10, "model_and_run_mb": 100.0 * kept,
                "device": "cpu"}

    monkeypatch.setattr(S, "spec", lambda m: Spec())
    monkeypatch.setattr(S, "heads", lambda m, method, k=None, *a, **kw: [(2, 0), (6, 1)])
    monkeypatch.setattr(timing, "measure", fake_measure)
    monkeypatch.setattr(timing, "busy_cpu_share", lambda: 0.0)
    first = S.tables.model_pruning_cost("m", tokens=500, repeats=2)
    n = len(calls)
    assert n == len(S.p.prune_levels) + 1 and calls[-1] == ("eexit", 7)  # exits after layer 6
    assert first.loc[first["kept layers"] == 5, "latency ratio"].item() == pytest.approx(0.5)
    again = S.tables.model_pruning_cost("m", tokens=500, repeats=2)
    assert len(calls) == n  # nothing re-measured
    pd.testing.assert_frame_equal(first, again)
    S.tables.model_pruning_cost("m", tokens=500, repeats=3)
    assert len(calls) == 2 * n
    assert len(list((tmp_path / "timings" / "pruning_cost").glob("m-*.json"))) == 2
    assert not list((tmp_path / "timings" / "pruning_cost").glob("*.tmp"))  # written whole, then renamed
    assert set(dtypes) == {None}
    # a model whose records are bf16 is timed in bf16, and that is another key
    from dataclasses import replace

    S.p = replace(S.p, dtype_by_model=(("m", "bfloat16"),))
    S.tables.model_pruning_cost("m", tokens=500, repeats=3)
    assert len(calls) == 3 * n and dtypes[2 * n:] == ["bfloat16"] * n


def test_the_explorer_never_starts_forwards_unasked(tmp_path, shared_data, monkeypatch):
    """On an empty cache explore() refuses (NotCached, naming `make warm` and what is missing), and the committed
    view refuses a profile without committed tables (NotCommitted, naming `make reproduce`)."""
    from corelib.study.explorer import Committed, NotCached, NotCommitted, explore

    monkeypatch.setenv("CORELIB_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr("corelib.models.load_model", lambda *a, **kw: pytest.fail("a model was loaded"))
    S = Study("smoke", data=shared_data, out=tmp_path / "results")
    with pytest.raises(NotCached, match=r"make warm PROFILE=smoke MODEL=smollm2-135m"):
        explore(S, "smollm2-135m", "core", 8, 0.001)
    with pytest.raises(NotCommitted, match=r"make reproduce PROFILE=smoke"):
        Committed(S)


@pytest.mark.parametrize("name", ["quick", "cpu", "cpu-dense"])
def test_the_explorer_shows_the_committed_numbers_on_an_empty_cache(name, tmp_path, shared_data, monkeypatch):
    """The explorer notebook, run whole on an empty cache, shows a number of the profile's committed Table 1 and
    sweep, loads no model and writes no record."""
    import nbformat
    import pandas as pd
    from nbclient import NotebookClient

    from conftest import REPO

    monkeypatch.setenv("CORELIB_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("CORELIB_DATA", str(shared_data))
    tables = REPO / "results" / name / "tables"
    first = pd.read_csv(tables / "table1.csv")["model"].iloc[0]
    sweep = pd.read_csv(tables / "sweep.csv")
    at8 = sweep[(sweep["model"] == first) & (sweep["order"] == "core") & (sweep["heads"] == 8)
                & (sweep["collection"] == "mean over collections")]["ndcg@10"].iloc[0]
    nb = nbformat.read(REPO / "notebooks" / "explorer.ipynb", as_version=4)
    nb.cells[1].source = f'PROFILE = {name!r}\nDATA = {str(shared_data)!r}\nOUT = {str(REPO / "results")!r}'
    NotebookClient(nb, kernel_name="python3", timeout=600, resources={"metadata": {"path": str(REPO / "notebooks")}}).execute()
    assert not (tmp_path / "cache").exists() or not list((tmp_path / "cache").rglob("*.safetensors"))
    text = json.dumps([o for c in nb.cells for o in c.get("outputs", [])])
    assert "Traceback" not in text and "error" not in text.lower()
    widgets = json.dumps(nb.metadata.get("widgets", {}))
    assert f"{at8:.4f}" in widgets  # CoRe-R's top 8, mean over collections, as the committed sweep holds it
    assert f"Committed tables of profile {name}" in widgets
