"""Bad or unusual inputs, second pass: outputs never replace what a path points at, head rankings and converted
weights carry their identity, numbers are refused rather than truncated, every check comes before the forwards,
and no entry point ends in a raw traceback. Each test fails without the guard it names."""

import gzip
import json
import os
import stat
import threading
from pathlib import Path

import pytest
import torch

from corelib.data import DataError, load_collection, load_detection, read_qrels, read_trec_run, write_trec_run
from corelib.heads import HeadSet, head_ranking_path
from corelib.storage import StorageError, check_output, publish_tree, write_output
from conftest import REPO
from test_reliability import collection
from tiny_models import tiny_model

RUN = {"q1": {"d1": 2.0, "d2": 1.0}}


# ----------------------------------------------------------------------------- --out never replaces what is there


def test_an_output_through_a_symlink_writes_its_target_and_keeps_the_link(tmp_path):
    target = tmp_path / "real.trec"
    target.write_text("old\n")
    link = tmp_path / "link.trec"
    link.symlink_to(target)
    write_trec_run(RUN, link)  # otherwise: the link became a regular file and its target kept "old"
    assert link.is_symlink() and target.read_text().startswith("q1 Q0 d1 1")


def test_a_fifo_is_written_through_not_replaced(tmp_path):
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    got = []
    reader = threading.Thread(target=lambda: got.append(fifo.read_text()))
    reader.start()
    HeadSet([(0, 1), (2, 3)], "m").save(fifo)  # otherwise: renamed a regular file onto the FIFO
    reader.join(10)
    assert stat.S_ISFIFO(os.stat(fifo).st_mode)
    assert json.loads(got[0])["heads"] == [[0, 1], [2, 3]]


def test_dev_null_stays_a_device():
    write_output("/dev/null", "anything\n")
    assert stat.S_ISCHR(os.stat("/dev/null").st_mode)
    assert check_output("/dev/null") == Path("/dev/null")


def test_replacing_an_output_keeps_its_permissions(tmp_path):
    out = tmp_path / "run.trec"
    out.write_text("old\n")
    os.chmod(out, 0o640)
    write_trec_run(RUN, out)
    assert stat.S_IMODE(out.stat().st_mode) == 0o640


@pytest.mark.parametrize("where", ["/proc/version", "/proc/corelib-out/run.trec"])
def test_an_output_that_cannot_be_written_is_refused_before_anything_runs(where):
    # otherwise: the early check read permission bits, which pass for root; the write failed after the forwards
    with pytest.raises(StorageError, match="cannot write"):
        check_output(where)


def test_a_cache_that_takes_no_files_is_refused_before_the_model_loads(shared_data, monkeypatch, capsys):
    from corelib.__main__ import main

    monkeypatch.setattr("corelib.models.load_model", _no_forward)
    rc = main(["rerank", "--data", str(shared_data), "--collection", "scifact", "--max-queries", "1",
               "--cache", "/proc/corelib-cache"])
    assert rc == 2 and "cannot take new files" in capsys.readouterr().err


def _no_forward(*args, **kwargs):
    raise AssertionError("a model was loaded before the inputs were checked")


# ----------------------------------------------------------------------------- identities


def test_two_checkpoints_with_one_folder_name_get_two_ranking_files(tokenizer, tmp_path):
    from corelib.models import model_spec

    specs = []
    for seed, run in ((0, "run1"), (1, "run2")):
        lm = tiny_model("llama", tokenizer, seed=seed)
        where = tmp_path / run / "checkpoint-500"
        lm.backbone.save_pretrained(where)
        tokenizer.save_pretrained(where)
        specs.append(model_spec(str(where)))
    a, b = specs
    assert a.model_id == b.model_id == "checkpoint-500"
    pa, pb = (head_ranking_path(tmp_path / "heads", s.model_id, "core", s.fingerprint) for s in specs)
    assert pa != pb and pa.name.startswith("checkpoint-500-")
    assert head_ranking_path("h", "smollm2-135m", "core", "builtin:smollm2-135m:x") == Path("h/smollm2-135m.core.json")

    ranking = HeadSet([(0, 0), (1, 1), (2, 2)], a.model_id, "core", ranking=True, fingerprint=a.fingerprint)
    ranking.save(pa)
    loaded = HeadSet.load(pa).top(2)
    assert loaded.fingerprint == a.fingerprint
    loaded.check(a.model_id, a.num_layers, a.num_heads, a.fingerprint)
    with pytest.raises(ValueError, match="other weights named checkpoint-500"):
        loaded.check(b.model_id, b.num_layers, b.num_heads, b.fingerprint)


def test_converted_weights_are_checked_against_their_digest(tmp_path, monkeypatch):
    from corelib import catalogue, gguf_weights as models

    monkeypatch.setenv("CORELIB_CACHE", str(tmp_path))
    name = "smollm2-135m"
    folder = tmp_path / "models" / name
    folder.mkdir(parents=True)
    weights = folder / models.WEIGHTS_FILE
    weights.write_bytes(b"\x01" * 4096)
    import hashlib

    marker = {"gguf_sha256": catalogue.BUILTIN_MODELS[name].sha256, "converter": catalogue.CONVERTER_VERSION,
              "weights_sha256": hashlib.sha256(weights.read_bytes()).hexdigest(), "weights_bytes": 4096}
    (folder / "corelib.json").write_text(json.dumps(marker))
    assert models.converted_dir(name, verify=True) == folder
    with weights.open("r+b") as f:  # zero a block in place (otherwise: every score changed, exit 0)
        f.seek(1024)
        f.write(b"\x00" * 512)
    os.utime(weights, ns=(1, 1))
    with pytest.raises(catalogue.ModelLoadError, match="damaged or changed after conversion.*delete"):
        models.converted_dir(name, verify=True)
    weights.write_bytes(b"\x01" * 100)  # truncated: a clear message, not a SafetensorError
    with pytest.raises(catalogue.ModelLoadError, match="100 bytes, not 4,096"):
        models.converted_dir(name, verify=True)


def test_a_converted_tree_is_readable_by_others(tmp_path):
    import tempfile

    tmp = Path(tempfile.mkdtemp(dir=tmp_path))
    fd, private = tempfile.mkstemp(dir=tmp)
    os.close(fd)
    old = os.umask(0o022)
    try:
        publish_tree(tmp, tmp_path / "done")
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "done").stat().st_mode) == 0o755
    assert stat.S_IMODE((tmp_path / "done" / Path(private).name).stat().st_mode) == 0o644


# ----------------------------------------------------------------------------- numbers and head lists


@pytest.mark.parametrize("grade", ["0.5", "inf", "nan", "1e400"])
def test_qrels_grades_that_are_not_whole_numbers_are_refused(tmp_path, grade):
    path = tmp_path / "q.tsv"
    path.write_text(f"q1\td1\t1\nq2\td2\t{grade}\n")  # otherwise: 0.5 became 0 and q2 vanished
    with pytest.raises(DataError, match=r"q.tsv:2: the grade .* is not a whole number"):
        read_qrels(path)
    path.write_text("q1\td1\t2.0\n")
    assert read_qrels(path) == {"q1": {"d1": 2}}


@pytest.mark.parametrize("heads", [[[20.9, 3.7]], [[True, 1]], [[1, 2, 3]], [(1, 2), (1, 2)], "1-2", [["1", "2"]]])
def test_head_lists_are_refused_not_truncated(heads):
    with pytest.raises(ValueError, match="head"):
        HeadSet(heads, "m")


def test_a_repeated_head_in_python_is_refused(tokenizer):
    from corelib.rerank import Reranker

    lm = tiny_model("llama", tokenizer)
    with pytest.raises(ValueError, match="more than once"):
        Reranker(lm, heads=[(1, 1), (1, 1)])  # otherwise: the head's attention counted twice


def test_device_cuda_without_cuda_is_refused():
    from corelib.catalogue import ModelLoadError
    from corelib.models import model_spec

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    with pytest.raises(ModelLoadError, match="no CUDA device"):
        model_spec("smollm2-135m", device="cuda")  # otherwise: loaded on the CPU without a word


@pytest.mark.parametrize("override", [{"queries": 0}, {"temperature": float("nan")}, {"temperature": float("inf")},
                                      {"words": 2.5}, {"top_k": True}, {"positions": 30}])
def test_study_settings_are_checked_when_the_study_is_made(override):
    from corelib.study import Study

    with pytest.raises(ValueError):
        Study("quick", **override)  # otherwise: queries=0 ran with zero queries; NaN ran every forward first


# ----------------------------------------------------------------------------- data read once, checked once


@pytest.mark.parametrize("kw,match", [
    ({"queries": '{"_id": "q 1", "text": "x"}\n'}, r"queries.jsonl:1: the query id 'q 1' is empty or contains whitespace"),
    ({"corpus": '{"_id": "d\\t1", "text": "a"}\n'}, r"corpus.jsonl:1: the document id"),
    ({"qrels": "q1\td 1\t1\n"}, r"test.tsv:1: the document id 'd 1'"),
    ({"queries": '{"_id": "q1", "text": 42}\n'}, r"queries.jsonl:1: the query's 'text' is a int"),
    ({"corpus": '{"_id": "d1", "text": 3.5}\n'}, r"corpus.jsonl:1: the document's 'text' is a float"),
])
def test_ids_and_texts_are_checked_when_the_data_is_read(tmp_path, kw, match):
    with pytest.raises(DataError, match=match):  # otherwise: refused after every forward, or a raw TypeError
        load_collection("c", collection(tmp_path, **kw))


def test_bad_utf8_names_the_line_that_holds_the_byte(tmp_path):
    lines = [json.dumps({"_id": f"d{i}", "text": "plain text " * 5}) for i in range(5000)]
    lines[4321] = '{"_id": "bad", "text": "caf\xe9"}'
    data = "\n".join(lines).encode("utf-8").replace("caf\xc3\xa9".encode("latin-1"), b"caf\xe9")
    with pytest.raises(DataError, match=r"corpus.jsonl:4322: not valid UTF-8"):  # otherwise: a buffer offset's line
        load_collection("c", collection(tmp_path, corpus=data + b"\n"))


RUN_TEXT = "".join(f"q1 Q0 d{i} {i} {100 - i}.0 t\n" for i in range(1, 60)).encode()


@pytest.mark.parametrize("content", [b"not gzip at all", gzip.compress(RUN_TEXT)[:-12]])
def test_a_fake_or_truncated_gzip_run_is_a_data_error(tmp_path, content):
    path = tmp_path / "run.txt.gz"
    path.write_bytes(content)
    with pytest.raises(DataError, match="not a whole gzip file"):
        read_trec_run(path)


def test_a_detection_row_without_negatives_names_the_line(tmp_path):
    folder = tmp_path / "nq-open-detection"
    folder.mkdir()
    (folder / "detection.jsonl").write_text(json.dumps({"query_id": "a", "query": "q", "positive": {"_id": "p", "text": "t"}}) + "\n")
    with pytest.raises(DataError, match=r"detection.jsonl:1: the detection row has no 'negatives' field"):
        load_detection(tmp_path, 1, 1, 1)


# ----------------------------------------------------------------------------- Python API


def test_python_api_refuses_none_and_fractions(tokenizer):
    from corelib.prompts import PromptError
    from corelib.rerank import Reranker

    lm = tiny_model("llama", tokenizer)
    with pytest.raises(PromptError, match="docs is None"):
        Reranker(lm).rank("q", None)
    with pytest.raises(ValueError, match="heads=None"):
        Reranker(lm, heads=None)
    with pytest.raises(ValueError, match="words=2.5"):
        Reranker(lm, words=2.5)
    with pytest.raises(ValueError, match="top_k"):
        Reranker(lm, top_k=0)


# ----------------------------------------------------------------------------- every entry point: a domain error


def _bad_data(tmp_path, **kw):
    return str(collection(tmp_path, **kw))


CLI_CASES = {
    "corpus text is a number": (lambda t: ["rerank", "--data", _bad_data(t, corpus='{"_id": "d1", "text": 5}\n'),
                                           "--collection", "c"], "is a int"),
    "qrels grade inf": (lambda t: ["rerank", "--data", _bad_data(t, qrels="q1\td1\tinf\n"), "--collection", "c"],
                        "not a whole number"),
    "qrels all zero": (lambda t: ["rerank", "--data", _bad_data(t, qrels="q1\td1\t0\n"), "--collection", "c"],
                       "no query has both a text and a relevant judgement"),
    "qrels empty": (lambda t: ["rerank", "--data", _bad_data(t, qrels=""), "--collection", "c"],
                    "no query has both a text and a relevant judgement"),
    "empty query text": (lambda t: ["rerank", "--data", _bad_data(t, queries='{"_id": "q1", "text": " "}\n'),
                                    "--collection", "c"], "empty text"),
    "heads file of floats": (lambda t: ["rerank", "--data", _bad_data(t), "--collection", "c", "--heads",
                                        _write(t / "h.json", {"model_id": "smollm2-135m", "heads": [[20.9, 3.7]]})],
                             "not a (layer, head) pair"),
    "unwritable --out": (lambda t: ["rerank", "--data", _bad_data(t), "--collection", "c", "--out", "/proc/x/run"],
                         "cannot write"),
    "detect NaN temperature": (lambda t: ["detect", "--data", _bad_data(t), "--temperature", "nan"],
                               "positive finite"),
    "detect inf temperature": (lambda t: ["detect", "--data", _bad_data(t), "--temperature", "inf"],
                               "positive finite"),
    "detect --out a directory": (lambda t: ["detect", "--data", _bad_data(t), "--out", str(t)], "is a directory"),
    "detect in an unknown dtype": (lambda t: ["detect", "--data", _bad_data(t), "--dtype", "float8"], "unknown dtype 'float8'"),
    "detect with no layers": (lambda t: ["detect", "--data", _bad_data(t), "--num-layers", "0"], "num_layers=0 is outside"),
    "evaluate a truncated gz run": (lambda t: ["evaluate", "--data", _bad_data(t), "--collection", "c", "--run",
                                               _write_bytes(t / "r.txt.gz", b"\x1f\x8b\x08junk")], "not a whole gzip file"),
    "evaluate a run of another collection": (lambda t: ["evaluate", "--data", _bad_data(t), "--collection", "c", "--run",
                                                        _write_bytes(t / "r.txt", b"zz Q0 d1 1 1.0 t\n")],
                                             "share no query id"),
    "unknown model": (lambda t: ["rerank", "--data", _bad_data(t), "--collection", "c", "--model", "no-such-model"],
                      "unknown model"),
    "a K that is not in digits": (lambda t: ["rerank", "--data", _bad_data(t), "--collection", "c", "--heads", "core:\u00b2"],
                                  "digits 0-9"),
    "an unknown metric cutoff": (lambda t: ["evaluate", "--data", _bad_data(t), "--collection", "c", "--run",
                                            _write_bytes(t / "r.txt", b"q1 Q0 d1 1 1.0 t\n"), "--metrics", "ndcg@ten"],
                                 "metric 'ndcg@ten'"),
    "a collection named ..": (lambda t: ["rerank", "--data", _bad_data(t), "--collection", ".."], "no empty, '.' or '..'"),
    "a pipe with no reader as --out": (lambda t: ["rerank", "--data", _bad_data(t), "--collection", "c", "--out",
                                                  _fifo(t / "fifo")], "a pipe with no reader"),
    "a query longer than the model's positions": (lambda t: ["rerank", "--data", _bad_data(
        t, queries=json.dumps({"_id": "q1", "text": "word " * 25000}) + "\n"), "--collection", "c"],
        "query q1 has 25,000 words"),
    "a needle grid longer than the model's positions": (lambda t: ["detect", "--data", _bad_data(t), "--method", "niah",
                                                                   "--lengths", "100000"], "--lengths 100000"),
    "a query with a lone surrogate": (lambda t: ["rerank", "--data", _bad_data(
        t, queries='{"_id": "q1", "text": "what \\udc80 is"}\n'), "--collection", "c"], "lone surrogate"),
}


def _fifo(path):
    os.mkfifo(path)
    return str(path)


def _write(path, obj):
    path.write_text(json.dumps(obj))
    return str(path)


def _write_bytes(path, data):
    path.write_bytes(data)
    return str(path)


@pytest.mark.parametrize("case", sorted(CLI_CASES))
def test_every_cli_input_gives_a_domain_error_before_any_forward(case, tmp_path, monkeypatch, capsys):
    from corelib.__main__ import main

    monkeypatch.setattr("corelib.models.load_model", _no_forward)
    monkeypatch.setenv("CORELIB_CACHE", str(tmp_path / "cache"))
    argv, match = CLI_CASES[case]
    rc = main(argv(tmp_path))
    err = capsys.readouterr().err
    assert rc == 2, err
    assert err.startswith("error: ") and "Traceback" not in err
    assert match in err


STUDY_CASES = {
    "unknown profile": (["pending", "--profile", "nope"], "unknown profile 'nope'"),
    "model not in the profile": (["pending", "--profile", "smoke", "--model", "gemma3-270m"], "not in profile"),
    "unknown warm step": (["warm", "--profile", "smoke", "--step", "scifact shuffled"], "no warm step"),
    "robustness without a per-query table": (["robustness", "--profile", "smoke", "--out", "/nonexistent"],
                                             "no per-query table"),
    "notebooks of an unknown profile": (["notebooks", "--profile", "nope", "notebooks/01_data_and_models.ipynb"],
                                        "unknown profile 'nope'"),
    "clean-outputs on a missing file": (["clean-outputs", "/nonexistent/x.ipynb"], "is not a file"),
    "add-findings on a file that is not a notebook": (["add-findings", "README.md"], "README.md is not a Jupyter notebook"),
    "figures with no tables": (["figures", "--profile", "smoke", "--out", "/nonexistent"], "no table in"),
    "order remedies of a profile without them": (["order-remedies", "--profile", "quick", "--out", "/nonexistent"],
                                                 "runs no order remedies"),
}


@pytest.mark.parametrize("case", sorted(STUDY_CASES))
def test_every_study_command_gives_a_domain_error(case, shared_data, monkeypatch, capsys):
    from corelib.study.__main__ import main

    monkeypatch.setattr("corelib.models.load_model", _no_forward)
    monkeypatch.setenv("CORELIB_DATA", str(shared_data))
    argv, match = STUDY_CASES[case]
    monkeypatch.chdir(REPO)
    rc = main(argv)
    err = capsys.readouterr().err
    assert rc == 2 and err.startswith("error: ") and match in err, err


def test_make_with_an_unknown_profile_model_or_data_directory_stops_at_once_and_leaves_no_folder():
    import shutil
    import subprocess

    from conftest import REPO

    if shutil.which("make") is None or not (REPO / ".venv" / ".setup-done").is_file():
        pytest.skip("needs make and the set-up .venv")
    out = subprocess.run(["make", "--no-print-directory", "-C", str(REPO), "reproduce", "PROFILE=no-such-profile"],
                         capture_output=True, text=True, timeout=300)
    assert out.returncode != 0 and "unknown profile 'no-such-profile'" in out.stdout + out.stderr
    assert "Traceback" not in out.stdout + out.stderr
    assert not (REPO / "results" / "no-such-profile").exists()  # otherwise: an empty results/<name>/ was left
    # a model outside the profile, or a data directory that does not exist: stopped before any notebook runs
    for arg, said, folder in [("MODEL=no-such-model", "['no-such-model'] not in profile 'smoke'", "smoke/models/no-such-model"),
                              ("DATA=/no/such/dir", "data directory /no/such/dir (--data, DATA= or data=) does not exist", None)]:
        out = subprocess.run(["make", "--no-print-directory", "-C", str(REPO), "reproduce", "PROFILE=smoke", arg],
                             capture_output=True, text=True, timeout=300)
        assert out.returncode != 0 and said in out.stdout + out.stderr, arg
        assert "Traceback" not in out.stdout + out.stderr and "papermill" not in out.stdout + out.stderr, arg
        assert folder is None or not (REPO / "results" / folder).exists()


# every study subcommand, with an unknown profile (and the two that take files, with a missing one): one line
# naming it, exit 2, no model loaded
STUDY_SUBCOMMANDS = {
    "warm": [], "pending": [], "notebooks": ["notebooks/01_data_and_models.ipynb"], "time-pruning": [],
    "practitioner-cost": [], "robustness": [], "order-check": [], "manifest": [], "order-remedies": [],
    "record-costs": [], "precision-check": ["--model", "smollm2-135m"],
    "machine-check": ["--model", "smollm2-135m", "--against", "HEAD"], "comparisons": [], "record-free": [],
    "released": [], "figures": [], "headline": [], "banner": [], "ship-heads": [],
}


@pytest.mark.parametrize("command", sorted(STUDY_SUBCOMMANDS))
def test_every_study_subcommand_names_an_unknown_profile(command, shared_data, monkeypatch, capsys, tmp_path):
    from corelib.study.__main__ import main

    monkeypatch.setattr("corelib.models.load_model", _no_forward)
    monkeypatch.setenv("CORELIB_DATA", str(shared_data))
    monkeypatch.setenv("CORELIB_CACHE", str(tmp_path / "cache"))
    monkeypatch.chdir(REPO)
    rc = main([command, "--profile", "nope", *STUDY_SUBCOMMANDS[command]])
    err = capsys.readouterr().err
    assert rc == 2 and err.startswith("error: ") and "unknown profile 'nope'" in err and "Traceback" not in err, err


def test_the_study_subcommand_table_is_whole():
    import argparse

    from corelib.study import __main__ as cli

    parsers = set()
    original = argparse._SubParsersAction.add_parser

    def spy(self, name, **kw):
        parsers.add(name)
        return original(self, name, **kw)

    argparse._SubParsersAction.add_parser = spy
    try:
        cli.main(["banner", "--profile", "smoke"])
    finally:
        argparse._SubParsersAction.add_parser = original
    assert parsers - {"add-findings", "clean-outputs"} == set(STUDY_SUBCOMMANDS)  # a new subcommand joins the sweep


@pytest.mark.parametrize("call, error, match", [
    (lambda: __import__("corelib.study", fromlist=["Study"]).Study("nope"), "UsageError", "unknown profile 'nope'"),
    (lambda: __import__("corelib.models", fromlist=["load_model"]).load_model("no-such-model"), "ModelLoadError",
     "unknown model"),
    (lambda: __import__("corelib.rerank", fromlist=["Reranker"]).Reranker(
        __import__("corelib.models", fromlist=["model_spec"]).model_spec("smollm2-135m")).rank("q", [{"id": "a"}]),
     "PromptError", "has no 'text' field"),
])
def test_python_entry_points_give_domain_errors_before_any_forward(call, error, match, monkeypatch):
    from corelib.errors import CorelibError

    monkeypatch.setattr("corelib.models.load_model", _no_forward) if error != "ModelLoadError" else None
    with pytest.raises(CorelibError, match=match) as got:
        call()
    assert type(got.value).__name__ == error
