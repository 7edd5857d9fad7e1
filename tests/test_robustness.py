"""Forest, leave-one-collection-out and first-stage agreement on hand-made per-query rows."""

import numpy as np
import pandas as pd
import pytest

from corelib.study import Study, robustness


def rows(model, collection, n, a_minus_b, method_a="CoRe-R", method_b="ICR", seed=0):
    rng = np.random.default_rng(seed)
    base = rng.uniform(0.2, 0.6, n)
    out = []
    for i in range(n):
        q = f"{collection}-{i}"
        for method, v in ((method_a, base[i] + a_minus_b / 100), (method_b, base[i]), ("BM25", base[i] * 0.5)):
            out.append({"model": model, "first stage": "bm25", "collection": collection, "query_id": q, "method": method,
                        "head source": "nq" if method == "CoRe-R" else ("all" if method == "ICR" else np.nan),
                        "k": 8, "ndcg@10": v})
    return out


@pytest.fixture()
def study(tmp_path):
    return Study("smoke", out=tmp_path / "results")


def test_one_collection_carries_the_gain_and_leaving_it_out_removes_it(study):
    pq = pd.DataFrame(rows("m1", "big", 40, 10.0) + rows("m1", "flat", 40, 0.0) + rows("m2", "big", 40, 10.0)
                      + rows("m2", "flat", 40, 0.0))
    loo = robustness.leave_one_out(study, pq, claims=(("CoRe-R", "ICR"),))
    m1 = loo[loo["model"] == "m1"].set_index("left out")
    assert m1.loc["none", "difference"] == pytest.approx(5.0)  # collections weigh equally: (10 + 0) / 2
    assert m1.loc["big", "difference"] == pytest.approx(0.0) and m1.loc["flat", "difference"] == pytest.approx(10.0)
    pooled = loo[loo["model"] == robustness.POOLED].set_index("left out")
    assert pooled.loc["none", "queries"] == 80  # the two models share their queries: each counted once
    fo = robustness.forest(study, pq, claims=(("CoRe-R", "ICR"),))
    big = fo[(fo["model"] == "m1") & (fo["collection"] == "big")].iloc[0]
    assert big["difference"] == pytest.approx(10.0) and big["ci low"] == pytest.approx(10.0)
    assert (study.tables_dir / "forest.csv").is_file()


def test_agreement_with_bm25_is_the_per_query_correlation(study):
    pq = pd.DataFrame(rows("m1", "c", 30, 3.0))
    agree = robustness.first_stage_agreement(study, pq).set_index("method")
    # every method here is an affine function of the same base score: correlation 1
    assert agree.loc["CoRe-R", "correlation with BM25 (per-query ndcg@10)"] == pytest.approx(1.0)
    assert agree.loc["ICR", "queries"] == 30


def test_robustness_without_a_per_query_table_says_which_notebook_writes_it(study):
    with pytest.raises(FileNotFoundError, match="notebook 03"):
        robustness.write_all(study)


def test_released_scores_of_the_paper_models(shared_data, tmp_path):
    from corelib.study import released

    S = Study("cpu", data=shared_data, out=tmp_path / "results")
    depth = released.released_depth(S).set_index("model")
    assert depth.loc["Mistral-7B-Instruct-v0.2", "in middle third"] == 7
    assert depth.loc["phi-4", "top layers"] == [17, 18, 19, 19, 19, 19, 19, 23]
    assert set(depth["source"]) == {"from released scores"}
    pr = released.released_pruning(S).set_index(["model", "pruned share"])
    assert pr.loc[("Mistral-7B-Instruct-v0.2", 0.5), "kept layers"] == 16
    assert pr.loc[("Mistral-7B-Instruct-v0.2", 0.5), "unpruned top heads in kept layers"] == 6
    assert pr.loc[("Llama-3.1-8B-Instruct", 0.6), "re-detected top heads shared with unpruned"] == 1
    assert pr.loc[("phi-4", 0.0), "top-k share of all heads (%)"] == pytest.approx(0.5)


def test_the_report_leads_with_its_answer_and_links_its_figures(tmp_path):
    import shutil

    from conftest import REPO
    from corelib.study import report

    out = tmp_path / "results"
    shutil.copytree(REPO / "results" / "cpu" / "tables", out / "cpu" / "tables")
    (tmp_path / "figures" / "cpu").mkdir(parents=True)
    (tmp_path / "figures" / "cpu" / "forest.png").write_bytes(b"png")
    S = Study("cpu", out=out)
    text = report.write_report(S, out / "cpu" / "REPORT.md").read_text()
    heads = [line for line in text.splitlines() if line.startswith("## ")]
    assert heads[:2] == ["## The claims", "## Contents"]  # the claims table on the first screen
    assert heads[-2:] == ["## Provenance and checks", "## The analysis plan"]
    first = text.split("## Contents")[0]
    # the primary claim's row: the pooled, family-adjusted interval, the primary family's verdict, the models' mean
    row = next(line for line in first.splitlines() if line.startswith("| CoRe-R beats ICR | primary |"))
    assert "+3.50 [+2.41, +4.66] supported" in row and "supported (Holm p 0.0005)" in row
    assert "+2.33 [+0.24, +4.13]" in row and "+4.13 \u2713" in row and "+0.24 \u00b7" in row
    assert len(text.splitlines()) < 450
    assert "![forest](../../figures/cpu/forest.png)" in text and "(tables/forest.csv)" in text
    appendix = (out / "cpu" / "REPORT_APPENDIX.md").read_text()
    assert "[forest](../../figures/cpu/forest.png)" in appendix
    assert "| CoRe-R beats ICR | +4.13 [+2.56, +5.89]: supported |" in appendix  # every claim and model, in brief
