"""The precision check of a dtype against fp32 (analysis.RULES, *bf16 on the CPU*)."""

from pathlib import Path

import pandas as pd
import pytest

from corelib.study import Study
from corelib.study.precision import QUERY_TOLERANCE, agreement, passes, precision_check

TABLES = Path(__file__).resolve().parents[1] / "results" / "cpu" / "tables"


def _rows(model, values, method="ICR", src="all"):
    return pd.DataFrame([{"model": model, "collection": c, "query_id": f"q{i}", "method": method, "head source": src,
                          "ndcg@10": v} for i, (c, v) in enumerate(values)])


def test_agreement_applies_the_rule_per_method():
    fp32 = pd.concat([_rows("m", [("a", 0.5), ("a", 0.7), ("b", 0.2), ("b", 0.4)], m, s)
                      for m, s in (("ICR", "all"), ("QR-R", "nq"), ("CoRe-R", "nq"))])
    new = fp32.copy()
    new.loc[(new["method"] == "CoRe-R") & (new["query_id"] == "q0"), "ndcg@10"] = 0.5 + QUERY_TOLERANCE + 0.01
    new.loc[(new["method"] == "QR-R") & (new["query_id"] == "q1"), "ndcg@10"] = 0.7 + QUERY_TOLERANCE  # at the limit
    a = agreement(fp32, new, "m", "bfloat16").set_index("method")
    assert a.loc["ICR", "difference (points)"] == 0 and a.loc["ICR", "queries within 0.05"] == 1
    assert a.loc["QR-R", "queries within 0.05"] == 1  # within means <= the tolerance
    # one query of four moved by 0.06: 75% within (fails criterion 2); its collection's mean moves 3 points and the
    # mean over two collections 1.5 (fails criterion 1); QR-R's move of 0.05 is within, but its mean moves 1.25
    assert a.loc["CoRe-R", "queries within 0.05"] == 0.75 and a.loc["CoRe-R", "difference (points)"] == pytest.approx(1.5)
    verdicts = pd.DataFrame([{"claim": "CoRe-R beats ICR", "verdict fp32": "supported", "verdict (new dtype)": "supported",
                              "unchanged": True}])
    ok, why = passes(a.reset_index(), verdicts)
    assert not ok and why == "QR-R mean +1.25 points; CoRe-R mean +1.50 points; CoRe-R 75% of queries within 0.05"
    ok, why = passes(agreement(fp32, fp32, "m", "bfloat16"), verdicts.assign(**{"verdict (new dtype)": "inconclusive",
                                                                                 "unchanged": False}))
    assert not ok and why == "CoRe-R beats ICR: supported -> inconclusive"
    assert passes(agreement(fp32, fp32, "m", "bfloat16"), verdicts) == (True, "")


def test_the_precision_check_recomputes_the_committed_queries_in_bf16(shared_data, tmp_path):
    S = Study("smoke", data=shared_data, out=tmp_path, collections=("scifact", "cranfield"), niah_needles=None,
              queries=3, detection_samples=3)
    with pytest.raises(FileNotFoundError, match="has none: run profile smoke in fp32 first"):
        precision_check(S, "smollm2-135m")
    pq = S.tables.per_query(sources=("nq", "in-domain"))
    out = precision_check(S, "smollm2-135m", "bfloat16")
    a, v = out["precision"].set_index("method"), out["precision_verdicts"]
    assert set(a.index) == {"ICR", "QR-R", "CoRe-R", "Layer window"} and (a["queries"] == 6).all()
    assert a["checked"].all()  # every method row is judged on its own; ICR, QR-R and CoRe-R with NQ heads admit the model
    judged = out["precision"]
    assert (judged["mean within 0.5 point"] == (judged["difference (points)"].abs() <= 0.5)).all()
    fp32 = pq[(pq["method"] == "ICR")].groupby("collection")["ndcg@10"].mean().mean()
    assert a.loc["ICR", "ndcg@10 fp32"] == pytest.approx(fp32)
    assert (a["largest change"] >= 0).all() and a["passes"].nunique() == 1
    assert set(v["claim"]) >= {"CoRe-R beats ICR", "CoRe-R beats QR-R"} and (v["dtype"] == "bfloat16").all()
    assert bool(a["passes"].iloc[0]) == (a["failed"].iloc[0] == "" or pd.isna(a["failed"].iloc[0]))
    # written beside the other tables, and read back with the same columns
    assert len(S.tables.read("precision")) == 6  # ICR; QR-R and CoRe-R from two sources; the layer window
    # the committed per-query table was not touched
    assert S.tables.read("per_query").equals(S.tables.read("per_query"))
    with pytest.raises(ValueError, match="already computes smollm2-135m in bfloat16"):
        precision_check(Study(S.p, data=shared_data, out=tmp_path, dtype_by_model=(("smollm2-135m", "bfloat16"),)),
                        "smollm2-135m")
    with pytest.raises(ValueError, match="'gemma3-270m' is not a model of profile smoke"):
        precision_check(S, "gemma3-270m")


def test_a_stratified_sample_takes_small_collections_whole(shared_data):
    """``whole_up_to_by_model``: every query of a collection with at most n judged queries, the model's seeded
    sample of each larger one (the same sample as without the setting)."""
    plain = Study("smoke", data=shared_data, queries=3)
    S = Study("smoke", data=shared_data, queries=3, whole_up_to_by_model=(("smollm2-135m", 250),))
    judged = {c: len(S.collection(c).qrels) for c in ("scifact", "cranfield")}
    assert judged["cranfield"] <= 250 < judged["scifact"]
    assert len(S.candidates("smollm2-135m", "cranfield").ranking) == judged["cranfield"]
    assert list(S.candidates("smollm2-135m", "scifact").ranking) == list(plain.candidates("smollm2-135m", "scifact").ranking)
    assert "up to 3 queries/collection (every query of a collection with at most 250)" in S.p.sizes("smollm2-135m")
    with pytest.raises(ValueError, match="whole collections up to n queries for smollm2-135m"):
        Study("smoke", whole_up_to_by_model=(("smollm2-135m", -1),))


def test_the_report_states_the_precision_check():
    from corelib.study.report import precision_note

    fp32 = pd.concat([_rows("m", [("a", 0.5), ("a", 0.7), ("b", 0.2), ("b", 0.4)], m, s)
                      for m, s in (("ICR", "all"), ("QR-R", "nq"), ("CoRe-R", "nq"))])
    agree = agreement(fp32, fp32, "m", "bfloat16").assign(passes=True, failed="")
    verdicts = pd.DataFrame([{"model": "m", "dtype": "bfloat16", "unchanged": True}] * 3)
    note = precision_note(agree, verdicts)
    assert note == ("- **Precision check** (criteria 1-2 over every method row, as corrected after the numbers existed): "
                    "m in bfloat16 against fp32 on its 4 committed queries, heads detected again: all 3 method rows meet "
                    "criteria 1-2; 3 of 3 of Table 1's verdicts unchanged; passes: its rows are bfloat16.")
    moved = agree.copy()
    moved.loc[moved["method"] == "CoRe-R", ["head source", "difference (points)"]] = ("in-domain", -0.6)
    failed = precision_note(moved.assign(passes=False, failed="CoRe-R mean -0.60 points"), verdicts)
    assert "2 of 3 method rows meet criteria 1-2; not: CoRe-R (in-domain heads) -0.60 points, 100.0% within 0.05" in failed
    assert failed.endswith("fails: the model stays in fp32.")
    # the tables hold the model's rows in the dtype that failed: those rows are outside the plan until an fp32 rerun
    prov = pd.DataFrame([{"model": "m", "command": "make reproduce", "commit": "abc", "date": "d", "machine": "x",
                          "dtype": "bfloat16", "methods": ""}])
    assert precision_note(moved.assign(passes=False, failed="x"), verdicts, prov).endswith(
        "fails: its rows in these tables are bfloat16, outside the plan until an fp32 rerun.")
    # the model passes, and a row of another head source misses a criterion: that row is named as outside the plan
    assert precision_note(moved, verdicts, prov).endswith(
        "passes: its rows are bfloat16, but those that miss criteria 1-2 are outside the plan until an fp32 rerun.")
    assert precision_note(None, None) is None


def test_the_report_says_when_a_models_rows_predate_the_profiles_sample(tmp_path):
    from corelib.study.report import sample_notes

    S = Study("smoke", out=tmp_path, queries=3, whole_up_to_by_model=(("smollm2-135m", 250),))
    assert sample_notes(S) == []  # no tables yet
    S.tables_dir.mkdir(parents=True)
    pd.DataFrame({"collection": ["scifact", "cranfield"], "documents": [1, 1], "judged queries": [300, 225],
                  "first stage": "bm25", "BM25 nDCG@10 (all queries)": 0.5}).to_csv(S.tables_dir / "collections.csv", index=False)
    avg = pd.DataFrame({"model": ["smollm2-135m"], "first stage": ["bm25"], "collections": [2], "queries": [6],
                        **{m: [0.5] for m in S.tables.columns("table1_average")[4:]}})
    avg.to_csv(S.tables_dir / "table1_average.csv", index=False)
    assert S.p.expected_queries("smollm2-135m", {"scifact": 300, "cranfield": 225}) == 3 + 225
    (note,) = sample_notes(S)
    assert note.startswith("- **smollm2-135m's rows predate the profile's sample**: the tables hold 6 evaluated queries "
                           "of it, the profile's sample has 228 (")
    assert "`make pending PROFILE=smoke MODEL=smollm2-135m`" in note
    avg.assign(queries=228).to_csv(S.tables_dir / "table1_average.csv", index=False)
    assert sample_notes(S) == []


def test_the_cpu_profile_gives_the_15b_at_least_400_queries_in_bf16():
    """The 1.5B's sample: every query of MED, LISA, NPL and CISI, at least 60 of each other collection, 100 x 2
    detection prompts, bf16 (its precision check passed: results/cpu/tables/precision.csv)."""
    from corelib.study import profile

    p = profile("cpu")
    committed = pd.read_csv(TABLES / "collections.csv")
    judged = dict(zip(committed["collection"], committed["judged queries"]))
    m = "qwen2.5-coder-1.5b"
    assert p.expected_queries(m, judged) == 426 and p.detection_for(m) == 100 and p.dtype_for(m) == "bfloat16"
    for c in ("med", "lisa", "npl", "cisi"):
        assert p.queries_for(m, c, judged[c]) is None  # whole
    assert all(p.queries_for(m, c, judged[c]) >= 60 for c in ("scifact", "arguana", "cranfield"))
    check = pd.read_csv(TABLES / "precision.csv")
    assert check[(check["model"] == m) & (check["dtype"] == "bfloat16")]["passes"].all()


@pytest.mark.parametrize("name", ["cpu", "cpu-dense"])
def test_every_model_a_profile_runs_in_another_dtype_passed_its_precision_check(name):
    """The rule: a model's records leave fp32 only after its check passed. Each model in a profile's
    ``dtype_by_model`` has committed rows of that dtype in the cpu profile's ``precision.csv``, and all of them
    pass; a model whose committed check failed stays in fp32."""
    from corelib.study import profile

    p = profile(name)
    check = pd.read_csv(TABLES / "precision.csv")
    for model, dtype in p.dtype_by_model:
        rows = check[(check["model"] == model) & (check["dtype"] == dtype)]
        assert len(rows) and rows["passes"].all(), f"{model} runs in {dtype} without a passing precision check"
    for model, dtype in set(zip(check["model"], check["dtype"])):
        if not check[(check["model"] == model) & (check["dtype"] == dtype)]["passes"].all():
            assert p.dtype_for(model) != dtype, f"{model}'s {dtype} check failed, so it stays in fp32"


def test_the_report_says_where_a_models_rows_are_in_another_dtype_than_the_profile_computes(tmp_path):
    """A model whose check passed moves to bf16 in the profile before its rows are computed again: until then the
    report says that its committed rows are the fp32 ones, and how to rewrite them."""
    from corelib.study.report import dtype_notes

    S = Study("cpu", out=tmp_path, dtype_by_model=(("gemma3-270m", "bfloat16"),))
    S.tables_dir.mkdir(parents=True)
    pd.DataFrame([{"model": m, "command": "make reproduce PROFILE=cpu", "commit": "abc1234", "date": "2026-11-28",
                   "machine": "cpu, 2 cores", "dtype": "float32", "methods": ""} for m in S.p.models]
                 ).to_csv(S.tables_dir / "provenance.csv", index=False)
    assert dtype_notes(S) == ["- **gemma3-270m's rows are float32, and the profile now computes it in bfloat16** (its precision "
                     "check passed, `precision.csv`): `make reproduce PROFILE=cpu MODEL=gemma3-270m` rewrites them "
                     "in bfloat16."]


def _git(cwd, *args):
    import subprocess

    subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@t", *args], cwd=cwd, check=True, capture_output=True)


def test_a_rerun_on_another_machine_is_checked_against_the_earlier_runs_committed_rows(tmp_path):
    """``machine_check``: the model's rows in the tables against those a git revision holds, under the precision
    check's rule, with the share of identical scores and whether the top heads are the same."""
    from corelib.study.precision import machine_check
    from corelib.study.report import machine_note

    S = Study("smoke", out=tmp_path)
    S.tables_dir.mkdir(parents=True)
    values = [(c, 0.1 + 0.04 * i) for i, c in enumerate(["scifact"] * 10 + ["cranfield"] * 10)]
    pq = pd.concat([_rows(m, values, meth, src).assign(**{"first stage": "bm25", "k": 8})
                    for m in ("smollm2-135m", "other") for meth, src in (("ICR", "all"), ("QR-R", "nq"), ("CoRe-R", "nq"))])
    heads = pd.DataFrame([{"model": "smollm2-135m", "method": "core", "head source": "nq", "rank": r, "layer": r,
                           "head": 0, "score": 1.0 / r, "relative depth": 0.1} for r in (1, 2)])
    prov = lambda machine, commit: pd.DataFrame([{"model": "smollm2-135m", "command": "make reproduce", "commit": commit,  # noqa: E731
                                                  "date": "2026-12-01", "machine": machine, "dtype": "bfloat16",
                                                  "methods": ""}])
    S.tables.write("per_query", pq)
    S.tables.table1_comparisons(pq)
    S.tables.write("per_query_pruning", pq[pq["method"] == "CoRe-R"].assign(method="50% pruned"))
    S.tables.write("top_heads", heads)
    S.tables.write("provenance", prov("cpu, 2 cores (Xeon)", "aaa1111"))
    _git(tmp_path, "init", "-q")
    _git(tmp_path, "add", ".")
    _git(tmp_path, "commit", "-q", "-m", "the earlier run")
    with pytest.raises(ValueError, match="come from the same run"):
        machine_check(S, "smollm2-135m", "HEAD")
    S.tables.write("provenance", prov("cpu, 2 cores (EPYC)", "bbb2222"))
    # the rerun: one CoRe-R score of twenty moves by 0.02, the other scores and the heads stay
    moved = (pq["model"] == "smollm2-135m") & (pq["method"] == "CoRe-R") & (pq["query_id"] == "q0")
    S.tables.write("per_query", pq.assign(**{"ndcg@10": pq["ndcg@10"] + moved * 0.02}))
    S.tables.table1_comparisons(S.tables.read("per_query"))
    out = machine_check(S, "smollm2-135m", "HEAD")
    a = out["machine_check"].set_index("method")
    # the other per-query tables are compared too, under the same criteria (every method row the tables report)
    assert a.loc["50% pruned", "table"] == "per_query_pruning" and a.loc["50% pruned", "checked"]
    assert a.loc["50% pruned", "queries identical"] == 1 and (a.drop("50% pruned")["table"] == "per_query").all()
    v = out["machine_check_verdicts"].set_index("claim")
    assert v.loc["CoRe-R beats ICR", "difference (this run)"] == pytest.approx(0.1) and v["unchanged"].all()
    assert set(v["table"]) == {"comparisons_table1"}
    assert a.loc["CoRe-R", "difference (points)"] == pytest.approx(0.1)  # 2 points in one collection of two
    assert a.loc["CoRe-R", "queries identical"] == 0.95 and a.loc["CoRe-R", "queries within 0.05"] == 1
    assert a.loc["ICR", "queries identical"] == 1 and a["passes"].all() and a["top heads unchanged"].all()
    assert set(a["reference machine"]) == {"cpu, 2 cores (Xeon)"} and set(a["machine"]) == {"cpu, 2 cores (EPYC)"}
    assert S.tables.read("machine_check")["model"].tolist() == ["smollm2-135m"] * 4
    note = machine_note(S.tables.read("machine_check"), S.tables.read("machine_check_verdicts"))
    assert note.startswith("- **Rerun on another machine**: smollm2-135m's bfloat16 rows from cpu, 2 cores (EPYC) at "
                           "bbb2222 against its earlier run on cpu, 2 cores (Xeon) at aaa1111, 20 queries: all 4 method "
                           "rows meet criteria 1-2; the same top heads; 2 of 2 verdicts unchanged")
    # a row of another per-query table that misses a criterion is named
    shifted = S.tables.read("machine_check")
    shifted.loc[shifted["method"] == "50% pruned", ["difference (points)", "queries within 0.05"]] = (-0.6, 0.9)
    assert ("3 of 4 method rows meet criteria 1-2; not: per_query_pruning 50% pruned -0.60 points, 90.0% within 0.05"
            in machine_note(shifted, S.tables.read("machine_check_verdicts")))
    assert note.endswith("; passes.")
    # which run's rows the tables hold, from the provenance: the rerun's, or the earlier run's where it failed
    check, verdicts = S.tables.read("machine_check"), S.tables.read("machine_check_verdicts")
    assert machine_note(check, verdicts, S.tables.read("provenance")).endswith("; passes: the tables hold the rerun's rows.")
    kept = machine_note(check.assign(passes=False, failed="CoRe-R beats ICR: supported -> inconclusive"), verdicts,
                        prov("cpu, 2 cores (Xeon)", "aaa1111"))
    assert kept.endswith("; fails: the tables keep the earlier run's rows.")
    # the top heads in another order are the same set (a re-ranker sums them); a head that moved is said, and a
    # score that moved beyond the tolerance fails criterion 2
    S.tables.write("top_heads", heads.assign(rank=[2, 1]))
    assert machine_check(S, "smollm2-135m", "HEAD", write=False)["machine_check"]["top heads unchanged"].all()
    S.tables.write("top_heads", heads.assign(layer=[1, 3]))
    big = (pq["model"] == "smollm2-135m") & (pq["method"] == "ICR") & pq["query_id"].isin(["q0", "q1"])
    S.tables.write("per_query", pq.assign(**{"ndcg@10": pq["ndcg@10"] + big * 0.06}))
    a = machine_check(S, "smollm2-135m", "HEAD", write=False)["machine_check"]
    assert not a["top heads unchanged"].any() and not a["passes"].any()
    assert "ICR 90% of queries within 0.05" in a["failed"].iloc[0]
    # another sample, another dtype, a revision without the tables: each an error that says so
    S.tables.write("per_query", pq[pq["query_id"] != "q3"])
    with pytest.raises(ValueError, match="3 missing, 0 extra"):  # one query, three methods
        machine_check(S, "smollm2-135m", "HEAD")
    S.tables.write("provenance", prov("cpu, 2 cores (EPYC)", "bbb2222").assign(dtype="float32"))
    with pytest.raises(ValueError, match="that is a precision check"):
        machine_check(S, "smollm2-135m", "HEAD")
    with pytest.raises(FileNotFoundError, match="no provenance.csv at revision 'nosuchrev'"):
        machine_check(S, "smollm2-135m", "nosuchrev")
