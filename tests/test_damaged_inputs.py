"""Bad or unusual inputs, third pass: damaged weights and tables never pass silently, nothing hangs, and no entry
point ends in a traceback for a user's mistake (while a bug still shows its traceback). Each test fails without the
guard it names."""

import logging
import os
import shutil
import subprocess
import sys

import pytest

from conftest import REPO
from corelib.data import DataError, load_collection, read_qrels
from corelib.errors import UsageError, run_command
from corelib.prompts import PromptError
from corelib.storage import StorageError, check_output, write_output
from test_reliability import collection


# ----------------------------------------------------------------------------- silently wrong


def test_weights_damaged_in_place_with_their_time_restored_are_refused(tmp_path, default_lm):
    """Bit rot keeps a file's size and time: the check reads the whole file once per process, not a digest
    remembered by (path, size, time). Before: the damaged weights loaded, every score 0, records stored."""
    from corelib.storage import cache_root

    source = cache_root() / "models" / "smollm2-135m"
    cache = tmp_path / "cache"
    shutil.copytree(source, cache / "models" / "smollm2-135m")
    weights = cache / "models" / "smollm2-135m" / "model.safetensors"
    env = {**os.environ, "CORELIB_CACHE": str(cache)}
    # the digest remembered by (path, size, time), as a first load leaves it
    subprocess.run([sys.executable, "-c", f"from pathlib import Path; from corelib.fingerprints import file_sha256; "
                    f"file_sha256(Path({str(weights)!r}))"], env=env, check=True, cwd=REPO)
    times = weights.stat()
    with weights.open("r+b") as f:
        f.seek(weights.stat().st_size // 2)
        f.write(b"\x00" * 4096)
    os.utime(weights, ns=(times.st_atime_ns, times.st_mtime_ns))
    out = subprocess.run([sys.executable, "-m", "corelib", "rerank", "--data", str(REPO.parent / "shared" / "data"),
                          "--collection", "scifact", "--max-queries", "1", "--cache", str(tmp_path / "records")],
                         env=env, capture_output=True, text=True, cwd=REPO)
    assert out.returncode == 2, out.stderr
    assert "damaged or changed after conversion" in out.stderr and "Traceback" not in out.stderr
    assert not list((tmp_path / "records").rglob("*.safetensors"))  # no record stored from those weights


def _tables_copy(tmp_path, profile="quick"):
    out = tmp_path / "results"
    shutil.copytree(REPO / "results" / profile / "tables", out / profile / "tables")
    return out


def _study_main(argv, capsys):
    from corelib.study.__main__ import main

    rc = main(argv)
    return rc, capsys.readouterr().err


def test_comparisons_refuse_a_per_query_table_cut_short_or_missing(tmp_path, capsys):
    out = _tables_copy(tmp_path)
    pq = out / "quick" / "tables" / "per_query.csv"
    lines = pq.read_text().splitlines(keepends=True)
    pq.write_text("".join(lines[: len(lines) // 3]) + lines[len(lines) // 3][:10])  # cut mid-row
    rc, err = _study_main(["comparisons", "--profile", "quick", "--out", str(out)], capsys)
    assert rc == 2 and "per_query.csv is not the one the study wrote" in err and "git checkout" in err, err
    assert not (out / "quick" / "REPORT.md").exists()  # otherwise: exit 0, new verdicts, a rewritten REPORT.md
    pq.unlink()
    rc, err = _study_main(["comparisons", "--profile", "quick", "--out", str(out)], capsys)
    assert rc == 2 and "per_query.csv is missing, though manifest.json lists it" in err, err


def test_a_table_that_does_not_parse_names_its_file(tmp_path):
    from corelib.study import Study
    from corelib.study.tables.schema import DamagedTable, adopt_into_manifest

    out = _tables_copy(tmp_path)
    S = Study("quick", out=out)
    path = out / "quick" / "tables" / "table1.csv"
    path.write_text('model,collection\n"unclosed,x\n')
    (out / "quick" / "tables" / "manifest.json").unlink()  # a table the manifest does not know: parsed, and named
    with pytest.raises(DamagedTable, match=r"table1.csv cannot be read as table table1"):
        S.tables.read("table1")
    with pytest.raises(DamagedTable, match="restore it before adopting it"):
        adopt_into_manifest(S)


def test_figures_with_no_tables_say_what_to_run(tmp_path, capsys):
    rc, err = _study_main(["figures", "--profile", "quick", "--out", str(tmp_path)], capsys)
    assert rc == 2 and "make reproduce PROFILE=quick" in err  # otherwise: exit 0 without a word


def test_qrels_that_judge_documents_the_corpus_lacks_are_named_or_refused(tmp_path, caplog):
    qrels = "query-id\tcorpus-id\tscore\nq1\td1\t1\nq1\tgone-1\t1\nq2\tgone-2\t1\n"
    queries = '{"_id": "q1", "text": "x"}\n{"_id": "q2", "text": "y"}\n'
    with caplog.at_level(logging.WARNING):
        load_collection("c", collection(tmp_path, qrels=qrels, queries=queries))
    assert "gone-1" in caplog.text and "1 queries have no relevant document in the corpus" in caplog.text
    with pytest.raises(DataError, match="none of the relevant documents it judges is in the corpus"):
        load_collection("c", collection(tmp_path, qrels="q1\tgone-1\t1\n"))


def test_a_qrels_file_with_a_byte_order_mark_reads(tmp_path):
    path = tmp_path / "q.tsv"
    path.write_bytes("\ufeffquery-id\tcorpus-id\tscore\nq1\td1\t1\n".encode())
    assert read_qrels(path) == {"q1": {"d1": 1}}  # otherwise: "the score 'score' is not a number"


def test_a_document_whose_text_is_none_is_refused_like_a_missing_one():
    from corelib.rerank import as_documents

    with pytest.raises(PromptError, match="its text is None"):
        as_documents([{"id": "a", "text": None}], 100)


def test_no_collection_name_leads_out_of_the_store(tmp_path):
    from corelib.records import RecordStore

    store = RecordStore(tmp_path / "records")
    for group in ("..", ".", ""):
        path = store.path("m", group, "k")
        assert path.resolve().is_relative_to((tmp_path / "records" / "v2" / "m").resolve()) and path.parent.name != "m"
    with pytest.raises(DataError, match="'..'"):
        load_collection("..", tmp_path)


# ----------------------------------------------------------------------------- hangs and tracebacks


def test_a_pipe_without_a_reader_is_refused_before_anything_runs(tmp_path):
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    with pytest.raises(StorageError, match="a pipe with no reader"):  # otherwise: blocked in open() after the forwards
        check_output(fifo)


def test_a_full_device_is_a_storage_error():
    with pytest.raises(StorageError, match="free space there"):  # otherwise: an OSError traceback
        write_output("/dev/full", "x\n")


def test_a_full_record_cache_says_what_is_kept_and_how_to_resume(tokenizer, tmp_path, monkeypatch):
    from safetensors import SafetensorError

    from corelib.prompts import Document
    from corelib.records import RecordStore
    from corelib.rerank import Reranker
    from tiny_models import tiny_model

    def full(*args, **kwargs):
        raise SafetensorError("Error while serializing: IoError(No space left on device)")

    monkeypatch.setattr("corelib.records.save_tensors", full)
    rr = Reranker(tiny_model("llama", tokenizer), words=10, store=RecordStore(tmp_path))
    with pytest.raises(StorageError, match="0 of 1 records of this run cached so far are kept.*rerun the same command"):
        rr.record("q", [Document("a", "text a"), Document("b", "text b")], "q1")


def test_ctrl_c_is_one_line_and_exit_130(capsys):
    from corelib.progress import RecordTally

    RecordTally.start(10, 4)

    def stopped():
        raise KeyboardInterrupt

    assert run_command(stopped) == 130
    err = capsys.readouterr().err
    assert err.strip() == "interrupted: 4 of 10 records cached; rerun the same command to resume (nothing cached is lost)"


def test_an_internal_error_shows_its_traceback_and_says_it_is_a_bug(capsys):
    def bug():
        raise ValueError("an index went wrong inside corelib")

    assert run_command(bug) == 1  # otherwise: printed as a user's mistake, "error: an index went wrong ...", exit 2
    err = capsys.readouterr().err
    assert "Traceback" in err and "this is a bug in corelib" in err


@pytest.mark.parametrize("call, match", [
    (lambda: __import__("corelib.study", fromlist=["Study"]).Study("smoke", bogus=1), "unknown profile setting"),
    (lambda: __import__("corelib.heads", fromlist=["parse_heads"]).parse_heads("core:\u00b2"), "digits 0-9"),
    (lambda: __import__("corelib.evaluate", fromlist=["check_metrics"]).check_metrics(["ndcg@ten"]), "metric 'ndcg@ten'"),
])
def test_python_entry_points_give_domain_errors(call, match):
    with pytest.raises(UsageError, match=match):
        call()


def test_a_single_model_name_is_one_model_not_its_letters():
    from corelib.study import Study

    assert Study("cpu", models="smollm2-135m").p.models == ("smollm2-135m",)


def test_a_heads_file_in_a_folder_with_a_colon_is_that_file(tmp_path):
    from corelib.heads import HeadSet, parse_heads

    path = tmp_path / "run:2" / "heads.json"
    path.parent.mkdir()
    HeadSet([(0, 1)], "m").save(path)
    assert parse_heads(str(path)).path == path and parse_heads(f"{path}:1").k == 1


def test_a_lone_surrogate_is_refused_before_the_model_loads(tokenizer, monkeypatch):
    from corelib.models import model_spec
    from corelib.rerank import Reranker

    spec = model_spec("smollm2-135m")
    monkeypatch.setattr(type(spec), "load", lambda self: pytest.fail("the model loaded"))
    with pytest.raises(PromptError, match="lone surrogate"):
        Reranker(spec).rank("what \udc80 is", ["a", "b"])


def test_a_query_longer_than_the_context_names_the_query_and_the_right_fix(tokenizer):
    from types import SimpleNamespace

    from corelib.prompts import Document, build_prompt
    from corelib.records import check_context

    prompt = build_prompt(tokenizer, "word " * 300, [Document("a", "text")])
    lm = SimpleNamespace(max_positions=200, model_id="m")
    with pytest.raises(PromptError, match=r"query q7's prompt has .* the query alone has .* shorten it"):
        check_context(lm, prompt, 100, 1, "q7")
