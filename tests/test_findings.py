"""Every numbered notebook ends with its generated 'paper vs here' cell, and that cell's text comes from the
tables: a verdict where a claim was tested, a setting or a descriptive number (no verdict) where none was."""

import os
import re
from pathlib import Path

import nbformat
import pytest

from conftest import REPO, committed_files
from corelib.study import Study, report
from corelib.study.findings_cells import HEADING_MARK, add_findings, has_findings


def test_every_numbered_notebook_ends_with_its_generated_findings():
    for path in sorted((REPO / "notebooks").glob("[0-9][0-9]_*.ipynb")):
        cells = nbformat.read(path, as_version=4).cells
        last, heading = cells[-1], cells[-2]
        assert last.cell_type == "code" and ("report.findings(S, [" in last.source or "report.answer(S)" in last.source), path.name
        assert heading.cell_type == "markdown" and HEADING_MARK in heading.source, path.name


def test_every_committed_executed_notebook_ends_with_its_findings():
    # the committed ones: an ignored run of the smoke profile is a reader's, not the study's
    executed = [p for p in committed_files("results/*.ipynb") if re.fullmatch(r"[0-9][0-9]_\w+\.ipynb", p.name)]
    assert len(executed) >= 55
    lacking = [str(p.relative_to(REPO)) for p in executed
               if not has_findings(nbformat.read(p, as_version=4), nbformat.read(REPO / "notebooks" / p.name, as_version=4))]
    assert not lacking, f"run `python -m corelib.study add-findings` on {lacking} (or rerun them)"


def test_findings_of_the_set_up_and_the_ablations_come_from_the_committed_tables():
    S = Study("cpu", out=REPO / "results")
    setting = report.findings(S, ["collections", "prompt_lengths"])
    assert "no claim is tested in this notebook" in setting and ", supported" not in setting
    assert ("Here: 7 collections (scifact, arguana, cranfield, cisi, med, npl, lisa; 1,033-11,429 documents) and "
            "xquad-r/de, xquad-r/en, xquad-r/es; top-20 BM25 candidates, 100 words/doc.") in setting
    dense = report.findings(Study("cpu-dense", out=REPO / "results"), ["collections"])
    assert "top-20 DENSE (minilm-l6) candidates" in dense  # the profile's encoder, as the Study summary names it
    # the "<1% of heads" claim: 8 heads are a larger share of a small model's heads
    assert "smollm2-135m top 8 of 30 x 9 = 270 heads (3.0%)" in setting and "gemma3-270m top 8 of 18 x 4 = 72 heads (11.1%)" in setting
    ablations = report.findings(S, ["ablation_temperature", "ablation_calibrated_detection"])
    assert "smollm2-135m CoRe-R nDCG@10 0.4620-0.4638 over t = 0.0001, 0.001, 0.01, 0.1, 1 (highest at t = 0.1, 1)" in ablations
    assert "smollm2-135m detecting on calibrated mass moves CoRe-R -0.25 points, QR-R +0.85 points" in ablations
    detection = report.findings(S, ["detection_temperature"])
    assert "qwen2.5-coder-1.5b detection 100 NQ queries x 2 positions, 19 negatives, t = 0.001; at t = 0.0001, 0.01, 0.1, 1 the top 8 shares 3-8" in detection


def test_the_tested_claims_carry_their_verdicts_and_the_answer_is_the_reports_summary(tmp_path):
    S = Study("cpu", out=REPO / "results")
    tested = report.findings(S, ["comparisons_table1"])
    assert "(points of nDCG@10 [confidence interval] and the verdict" in tested
    assert "pooled (a query once) +3.50 [+2.41, +4.66], supported" in tested
    answer = report.answer(S)
    assert answer.splitlines()[2:] == report.summary(S.tables.read("verdicts"))
    assert "No verdict yet" in report.answer(Study("cpu", out=tmp_path))
    assert report.findings(Study("cpu", out=tmp_path), ["collections"]).startswith("No claim of this notebook")


def _without_findings(tmp_path, executed: str):
    """A copy of a committed executed notebook with its closing findings cells (and any note) removed."""
    nb = nbformat.read(REPO / "results" / executed, as_version=4)
    while nb.cells and (HEADING_MARK in nb.cells[-1].source or "report.findings(S" in nb.cells[-1].source
                        or "added on" in nb.cells[-1].source):
        nb.cells.pop()
    path = tmp_path / Path(executed).name
    nbformat.write(nb, path)
    return path


def test_findings_are_added_to_an_executed_notebook_from_the_committed_tables(tmp_path):
    path = _without_findings(tmp_path, "cpu-dense/01_data_and_models.ipynb")
    assert add_findings(path)
    cells = nbformat.read(path, as_version=4).cells
    note, heading, call = cells[-3:]
    assert "add-findings 01_data_and_models.ipynb`, without running the cells above again" in note.source
    assert "smollm2-135m's rows from the run above (`make reproduce PROFILE=cpu-dense` at commit" in note.source
    assert HEADING_MARK in heading.source and call.execution_count is None
    expected = report.findings(Study("cpu-dense", out=REPO / "results"), ["collections", "prompt_lengths"])
    assert "".join(call.outputs[0]["data"]["text/markdown"]) == expected
    assert not add_findings(path)  # already ends with them
    assert len(nbformat.read(path, as_version=4).cells) == len(cells)


def test_findings_are_refused_where_the_tables_hold_another_run_or_no_run_is_recorded(tmp_path):
    path = _without_findings(tmp_path, "cpu-dense/01_data_and_models.ipynb")
    nb = nbformat.read(path, as_version=4)
    nb.metadata.papermill.start_time = "2026-11-30T10:00:00.000000+00:00"
    nbformat.write(nb, path)
    with pytest.raises(ValueError, match=r"rows from `make reproduce PROFILE=cpu-dense` at .*rerun it: make reproduce "
                                         r"PROFILE=cpu-dense ONLY=01"):
        add_findings(path)
    del nb.metadata["papermill"]
    nbformat.write(nb, path)
    with pytest.raises(ValueError, match="no papermill metadata"):
        add_findings(path)


def test_clean_outputs_names_no_machine_folder_and_numbers_appended_cells(tmp_path):
    """An executed notebook keeps the data directory as the notebooks folder reaches it, and the cells papermill ran
    after the last numbered one get the next numbers."""
    import nbformat

    from corelib.study.__main__ import clean_outputs
    from corelib.study.findings_cells import NOTEBOOKS

    nb = nbformat.v4.new_notebook()
    params = nbformat.v4.new_code_cell('# Parameters\nPROFILE = "cpu"\nDATA = "/srv/data/beir"\n')
    params.metadata["tags"] = ["injected-parameters"]
    ran = nbformat.v4.new_code_cell("1 + 1", execution_count=4)
    appended = nbformat.v4.new_code_cell("2 + 2", outputs=[nbformat.v4.new_output("execute_result", {"text/plain": "4"})])
    nb.cells = [params, ran, appended]
    nb.metadata["papermill"] = {"parameters": {"DATA": "/srv/data/beir", "PROFILE": "cpu"}}
    path = tmp_path / "x.ipynb"
    nbformat.write(nb, path)
    clean_outputs(path)
    got = nbformat.read(path, as_version=4)
    relative = os.path.relpath("/srv/data/beir", NOTEBOOKS)
    assert f'DATA = "{relative}"' in got.cells[0].source and got.cells[0].source.endswith("\n")
    assert got.metadata.papermill.parameters.DATA == relative and not relative.startswith("/")
    assert got.cells[2].execution_count == 5


def test_no_committed_executed_notebook_names_an_absolute_data_path():
    hits = [p for p in committed_files("results/*.ipynb") if '"DATA = \\"/' in p.read_text()]
    assert not hits, f"absolute data paths in {hits[:3]}: run `python -m corelib.study clean-outputs` on them"
