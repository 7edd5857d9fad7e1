"""Bad or unusual inputs: each gives a clear error naming the problem and the fix, never a silently
wrong result. Each test fails without the guard it names."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

from corelib.data import DataError, load_collection, read_qrels, write_trec_run
from corelib.heads import HeadSet, parse_heads, resolve_heads
from corelib.prompts import PromptError
from corelib.rerank import Reranker

REPO = Path(__file__).resolve().parents[1]


def collection(tmp_path, corpus=None, queries=None, qrels=None):
    base = tmp_path / "c"
    (base / "qrels").mkdir(parents=True, exist_ok=True)
    corpus = corpus if corpus is not None else '{"_id": "d1", "text": "a"}\n{"_id": "d2", "text": "b"}\n'
    queries = queries if queries is not None else '{"_id": "q1", "text": "x"}\n'
    qrels = qrels if qrels is not None else "query-id\tcorpus-id\tscore\nq1\td1\t1\n"
    for name, text in (("corpus.jsonl", corpus), ("queries.jsonl", queries), ("qrels/test.tsv", qrels)):
        (base / name).write_bytes(text if isinstance(text, bytes) else text.encode())
    return tmp_path


@pytest.mark.parametrize("kw,match", [
    ({"corpus": '{"_id": "d1", "text": "a"}\n{"_id": "d1", "text": "b"}\n'}, r"corpus.jsonl:2: document id d1 appears twice"),
    ({"qrels": "query-id\tcorpus-id\tscore\nq1\td1\t1\nq1\td2\n"}, r"test.tsv:3: a qrels line needs 3 tab-separated columns"),
    ({"qrels": "q1\td1\nq1\td2\n"}, r"test.tsv:1: a qrels line needs 3 .* found 2"),
    ({"qrels": "q1 d1 1\n"}, r"test.tsv:1: .*separated by spaces"),
    ({"qrels": "q1\td1\thigh\n"}, r"test.tsv:1: the score 'high' is not a number"),
    ({"corpus": '{"_id": "d1", "text": "a"}\n{"_id": "d2", "text": \n'}, r"corpus.jsonl:2: not valid JSON"),
    ({"corpus": b'{"_id": "d1", "text": "caf\xe9"}\n'}, r"corpus.jsonl:1: not valid UTF-8"),
    ({"corpus": '{"id": "d1", "text": "a"}\n'}, r"corpus.jsonl:1: the document has no '_id' field"),
    ({"queries": '{"_id": "q1"}\n'}, r"queries.jsonl:1: the query has no 'text' field"),
    ({"queries": '["q1", "x"]\n'}, r"queries.jsonl:1: a line must be a JSON object"),
])
def test_bad_collection_files_name_the_file_and_line(tmp_path, kw, match):
    with pytest.raises(DataError, match=match):
        load_collection("c", collection(tmp_path, **kw))


def test_good_qrels_still_read(tmp_path):
    path = tmp_path / "q.tsv"
    path.write_text("query-id\tcorpus-id\tscore\nq1\td1\t1\nq1\td2\t0\n\n")
    assert read_qrels(path) == {"q1": {"d1": 1, "d2": 0}}


def test_a_run_that_ranks_a_document_twice_is_refused(tmp_path):
    from corelib.data import read_trec_run

    path = tmp_path / "run.trec"
    path.write_text("q1 Q0 d1 1 3.0 t\nq1 Q0 d2 2 2.0 t\nq2 Q0 d1 1 1.0 t\nq1 Q0 d1 3 1.0 t\n")
    with pytest.raises(DataError, match=r"run.trec:4: document 'd1' is ranked again for query 'q1' \(first on line 1\)"):
        read_trec_run(path)  # otherwise: the prompt held d1 twice and its two scores collapsed into one
    path.write_text("q1 Q0 d1 1 3.0 t\nq1 Q0 d2 2 2.0 t\nq2 Q0 d1 1 1.0 t\n")
    assert read_trec_run(path) == {"q1": [("d1", 3.0), ("d2", 2.0)], "q2": [("d1", 1.0)]}


def test_trec_ids_with_whitespace_are_refused(tmp_path):
    with pytest.raises(DataError, match="whitespace"):
        write_trec_run({"q 1": {"d1": 1.0}}, tmp_path / "run.trec")
    write_trec_run({"q1": {"d1": 1.0}}, tmp_path / "run.trec")
    assert (tmp_path / "run.trec").read_text() == "q1 Q0 d1 1 1 corelib\n"
    assert not list(tmp_path.glob("*.tmp"))


def test_empty_document_ranks_last(default_lm):
    # otherwise: the token straddling an empty span was given to it (score -0.11, last by accident)
    ranked = Reranker(default_lm, words=50).rank("why is the sky blue?", [
        {"id": "sky", "text": "The sky is blue because air scatters blue light."},
        {"id": "empty", "text": ""}, {"id": "cats", "text": "Cats purr."}])
    assert {r.doc_id: r.score for r in ranked}["empty"] == float("-inf")
    assert ranked[-1].doc_id == "empty"  # whatever the other (calibrated, possibly negative) scores are


def test_python_api_inputs(default_lm):
    r = Reranker(default_lm, words=50)
    with pytest.raises(PromptError, match="single str: give a list"):
        r.rank("q", "a single document")  # otherwise: split into one-character documents
    with pytest.raises(PromptError, match="its text is a int"):
        r.rank("q", [{"id": "a", "text": 123}])
    with pytest.raises(PromptError, match="the query is a int"):
        r.rank(123, ["a"])
    with pytest.raises(ValueError, match="top_k=0"):
        Reranker(default_lm, top_k=0)


def test_a_head_ranking_needs_k(tmp_path, default_lm):
    ranking = HeadSet([(l, h) for l in range(30) for h in range(9)], "smollm2-135m", "core", ranking=True)
    path = ranking.save(tmp_path / "smollm2-135m.core.json")
    # otherwise: a file of all heads scored exactly as ICR under a CoRe label
    with pytest.raises(ValueError, match="ranks all 270 heads .* take its top K"):
        Reranker(default_lm, heads=str(path))
    assert Reranker(default_lm, heads=f"{path}:8").heads == ranking.heads[:8]
    assert Reranker(default_lm, heads="core:4", heads_dir=tmp_path).heads == ranking.heads[:4]
    for bad, match in (("core:abc", "K must be a positive whole number"), ("core", "say how many"),
                       ("core:0", "positive"), ("heads.txt", "use all, core:K")):
        with pytest.raises(ValueError, match=match):
            parse_heads(bad)
    with pytest.raises(FileNotFoundError, match="no qr head ranking for smollm2-135m"):
        resolve_heads("qr:8", "smollm2-135m", tmp_path)


def run_cli(*args, **env):
    return subprocess.run([sys.executable, "-m", "corelib", *args], capture_output=True, text=True, cwd=REPO,
                          timeout=900, env={**os.environ, **env})


@pytest.mark.shared_data
def test_cli_checks_inputs_before_any_forward(shared_data, tmp_path):
    base = ["rerank", "--data", str(shared_data), "--collection", "scifact", "--top-k", "3", "--words", "20"]
    for extra, match in ((["--max-queries", "0"], "--max-queries 0: it must be at least 1"),
                         (["--heads", "core:abc"], "K must be a positive whole number"),
                         (["--words", "-1"], "--words -1"),
                         (["--out", str(tmp_path / "file.txt" / "run.trec")], "is a file, not a directory")):
        (tmp_path / "file.txt").write_text("x")
        out = run_cli(*base, *extra, CORELIB_CACHE=str(tmp_path / "cache"))
        assert out.returncode == 2 and match in out.stderr and "Traceback" not in out.stderr, out.stderr
        assert not (tmp_path / "cache" / "records").exists()  # nothing was computed


@pytest.mark.shared_data
def test_cli_reports_the_depth_it_reranked(shared_data, tmp_path):
    out = run_cli("rerank", "--data", str(shared_data), "--collection", "scifact", "--top-k", "500", "--words", "5",
                  "--max-queries", "1", "--cache", str(tmp_path), "--heads", "all")
    assert out.returncode == 0, out.stderr
    assert "top-100 candidates" in out.stdout  # otherwise: 'top-500' for a run of 100
    assert "at most 100 candidates per query, fewer than --top-k 500" in out.stderr
