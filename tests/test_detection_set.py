"""The detection-set builder: the stored file's recipe, on the sample the package ships."""

import json
import subprocess
import sys

import pytest

from corelib.data import load_detection
from corelib.detection_set import NQ_OPEN_SAMPLE, build_detection_set, has_answer, read_nq_open
from corelib.errors import CorelibError


def test_builder_keeps_the_recipe_on_the_shipped_sample(tmp_path):
    questions = read_nq_open(NQ_OPEN_SAMPLE)
    assert len(questions) == 14 and questions[0].id == "nqopen-0000" and questions[0].gold.id == "nqopen-gold-0000"
    rows = build_detection_set(questions, num_negatives=5)
    assert build_detection_set(questions, num_negatives=5) == rows  # deterministic
    for q, row in zip(questions, rows):
        negatives = row["negatives"]
        assert len(negatives) == 5 and row["positive"]["_id"] == q.gold.id
        assert q.gold.id not in {n["_id"] for n in negatives}
        assert not any(has_answer(f"{n['title']} {n['text']}", q.answers) for n in negatives)
        bm25 = [n["bm25"] for n in negatives]
        assert bm25 == sorted(bm25, reverse=True)  # BM25 neighbours first, then the zero-score padding
    by_id = {r["query_id"]: r for r in rows}
    # BM25 puts the other capital city first for "what is the capital city of canada": topical, answer-free
    assert by_id["nqopen-0007"]["negatives"][0]["title"] in {"Canberra", "Brasília"}
    assert by_id["nqopen-0007"]["negatives"][0]["bm25"] > 0
    # the builder's output is what the study reads
    out = tmp_path / "data"
    out.mkdir()
    done = subprocess.run([sys.executable, "-m", "corelib", "build-detection-set", "--source", str(NQ_OPEN_SAMPLE),
                           "--negatives", "5", "--out", str(out)], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    path = out / "nq-open-detection" / "detection.jsonl"
    assert [json.loads(line) for line in path.read_text().splitlines()] == rows
    samples = load_detection(out, num_samples=3, num_negatives=5, positions=2)
    assert len(samples) == 6 and {s.docs[s.positive].doc_id for s in samples} == {"nqopen-gold-0000", "nqopen-gold-0001", "nqopen-gold-0002"}


def test_answers_match_as_token_runs():
    assert has_answer("The first prize went to Wilhelm Conrad Röntgen, of Germany.", ["Wilhelm Conrad Rontgen"])
    assert has_answer("Founded in 1912.", ["1912"]) and not has_answer("Founded in 19120.", ["1912"])
    assert not has_answer("Jane Austen's sister", ["Austen Jane"])


def test_too_few_passages_is_refused():
    questions = read_nq_open(NQ_OPEN_SAMPLE, limit=4)
    with pytest.raises(CorelibError, match="distinct gold passages cannot give 19 negatives"):
        build_detection_set(questions, num_negatives=19)
    with pytest.raises(CorelibError, match="is not a file"):
        read_nq_open(NQ_OPEN_SAMPLE.with_name("absent.jsonl"))


def test_the_stored_set_is_answer_free_by_this_matcher(shared_data):
    """The stored set was built by this recipe: none of its negatives holds its question's answer by this matcher."""
    path = shared_data / "nq-open-detection" / "detection.jsonl"
    if not path.is_file():
        pytest.skip("the stored detection set is not in the data directory")
    rows = [json.loads(line) for line in path.read_text().splitlines()[:300]]
    hits = [r["query_id"] for r in rows for n in r["negatives"] if has_answer(f"{n['title']} {n['text']}", r["answers"])]
    assert not hits
