"""The record key and on-disk format: identity of the model and the query, checked loads, no pickle."""

import copy
import json
import os
import time

import pytest
import torch

from corelib.prompts import Document
from corelib.records import FORMAT_VERSION, RecordRequest, RecordStore, get_records, record_fields, record_key
from tiny_models import tiny_model

DOCS = (Document("a", "The sky is blue because air scatters blue light."), Document("b", "Cats purr when content."))


def req(qid="q1", query="why is the sky blue", docs=DOCS, group="g"):
    return RecordRequest(qid, query, tuple(docs), group)


@pytest.fixture(scope="module")
def tiny(tokenizer):
    return tiny_model("llama", tokenizer)


def counting(lm):
    calls = []
    handle = lm.backbone.register_forward_pre_hook(lambda *a: calls.append(1))
    return calls, handle


def test_same_text_different_query_ids_are_two_records(tiny, tmp_path):
    # otherwise: the key left out the query id, so FEVER's duplicate query texts collapsed into one record
    store = RecordStore(tmp_path)
    recs = get_records(tiny, [req("q1"), req("q2")], store=store)
    assert [r.query_id for r in recs] == ["q1", "q2"]
    assert len(list(tmp_path.rglob("*.safetensors"))) == 2
    again = get_records(tiny, [req("q2"), req("q1")], store=store)
    assert [r.query_id for r in again] == ["q2", "q1"]


def test_models_with_the_same_name_but_other_weights_do_not_share_records(tokenizer, tmp_path):
    # otherwise: two checkpoints both called 'ckpt' shared records (the key held the folder's base name)
    a = tiny_model("llama", tokenizer, seed=0)
    b = tiny_model("llama", tokenizer, seed=1)
    assert a.model_id == b.model_id and a.fingerprint != b.fingerprint
    store = RecordStore(tmp_path)
    ra = get_records(a, [req()], store=store)[0]
    calls, handle = counting(b)
    rb = get_records(b, [req()], store=store)[0]
    handle.remove()
    assert calls, "the second model must run its own forward"
    assert not torch.allclose(ra.token_scores, rb.token_scores)


def test_directory_checkpoints_with_one_name_have_different_fingerprints(tokenizer, tmp_path):
    from corelib.models import model_spec

    for seed, where in ((0, "run1"), (1, "run2")):
        lm = tiny_model("llama", tokenizer, seed=seed)
        lm.backbone.save_pretrained(tmp_path / where / "ckpt")
        tokenizer.save_pretrained(tmp_path / where / "ckpt")
    s1, s2 = model_spec(str(tmp_path / "run1" / "ckpt")), model_spec(str(tmp_path / "run2" / "ckpt"))
    assert s1.model_id == s2.model_id == "ckpt"
    assert s1.fingerprint != s2.fingerprint and s1.fingerprint.startswith("dir:")
    assert (s1.num_layers, s1.num_heads) == (4, 4)
    assert model_spec(str(tmp_path / "run1" / "ckpt")).fingerprint == s1.fingerprint  # stable


def test_builtin_spec_needs_no_loaded_model(monkeypatch):
    import corelib.models as m

    monkeypatch.setattr(m, "load_model", lambda *a, **k: pytest.fail("model_spec must not load the model"))
    s = m.model_spec("qwen2.5-coder-0.5b")
    assert (s.num_layers, s.num_heads) == (24, 14) and s.fingerprint.startswith("builtin:qwen2.5-coder-0.5b:gguf-1d9614")


def test_stored_record_is_safetensors_and_checked_on_load(tiny, tmp_path, caplog):
    store = RecordStore(tmp_path)
    first = get_records(tiny, [req()], store=store)[0]
    (path,) = list(tmp_path.rglob("*.safetensors"))
    assert f"v{FORMAT_VERSION}" in path.parts
    from safetensors import safe_open

    with safe_open(str(path), "pt") as f:
        meta = json.loads(f.metadata()["fields"])
    assert meta["query_id"] == "q1" and meta["doc_ids"] == ["a", "b"] and meta["model"] == tiny.fingerprint
    # a file filed under this key but made for another request is not used
    other = tmp_path / "other"
    get_records(tiny, [req("q9", "another query")], store=RecordStore(other))
    (foreign,) = list(other.rglob("*.safetensors"))
    os.replace(foreign, path)
    calls, handle = counting(tiny)
    fresh = RecordStore(tmp_path)
    again = get_records(tiny, [req()], store=fresh)[0]
    handle.remove()
    assert calls and again.query_id == "q1" and torch.equal(again.token_scores, first.token_scores)
    assert "made for another request" in caplog.text
    # a torn file is recomputed too
    path.write_bytes(path.read_bytes()[:100])
    assert get_records(tiny, [req()], store=RecordStore(tmp_path))[0].query_id == "q1"


def test_a_pickle_where_a_record_belongs_is_never_unpickled(tiny, tmp_path, monkeypatch):
    """A pickle at the very path the store reads for this request is recomputed over, never loaded."""
    store = RecordStore(tmp_path)
    fields = record_fields(tiny.fingerprint, tiny.dtype, tiny.total_layers, True, req())
    path = store.path(tiny.model_id, fields["group"], record_key(fields))
    path.parent.mkdir(parents=True)
    torch.save({"evil": 1}, path)
    monkeypatch.setattr(torch, "load", lambda *a, **k: pytest.fail("a pickle was loaded"))
    calls, handle = counting(tiny)
    get_records(tiny, [req()], store=store)
    handle.remove()
    assert calls  # computed: the pickle was not taken for the record
    assert store.read(path, fields) is not None  # and replaced by the record


def test_key_covers_what_determines_a_record(tiny):
    base = record_fields(tiny.fingerprint, torch.float32, 4, True, req())
    variants = [
        record_fields(tiny.fingerprint, torch.bfloat16, 4, True, req()),
        record_fields(tiny.fingerprint, torch.float32, 3, True, req()),
        record_fields(tiny.fingerprint, torch.float32, 4, False, req()),
        record_fields(tiny.fingerprint, torch.float32, 4, True, req(query="another")),
        record_fields(tiny.fingerprint, torch.float32, 4, True, req(docs=DOCS[::-1])),
        record_fields(tiny.fingerprint, torch.float32, 4, True, req(docs=(DOCS[0], Document("b", "changed")))),
        record_fields("memory:other", torch.float32, 4, True, req()),
    ]
    keys = {record_key(f) for f in variants}
    assert len(keys) == len(variants) and record_key(base) not in keys


def test_orphan_temporary_files_are_removed(tiny, tmp_path):
    store = RecordStore(tmp_path)
    get_records(tiny, [req()], store=store)
    folder = next(tmp_path.rglob("*.safetensors")).parent
    orphan = folder / "dead.1234.tmp"
    orphan.write_text("x")
    old = time.time() - 7200
    os.utime(orphan, (old, old))
    get_records(tiny, [req("q3")], store=RecordStore(tmp_path))
    assert not orphan.exists()


def test_memory_budget_serves_repeated_reads(tiny, tmp_path):
    store = RecordStore(tmp_path, memory_mb=64)
    a = get_records(tiny, [req()], store=store)[0]
    for f in tmp_path.rglob("*.safetensors"):
        f.unlink()  # still served from memory
    assert get_records(tiny, [req()], store=store)[0] is a


def test_stored_files_are_readable_by_others_as_the_umask_allows(tiny, tmp_path):
    old = os.umask(0o022)
    try:
        get_records(tiny, [req("q-perm")], store=RecordStore(tmp_path))
    finally:
        os.umask(old)
    (path,) = list(tmp_path.rglob("*.safetensors"))
    assert path.stat().st_mode & 0o777 == 0o644  # mkstemp alone would leave 0600


def test_weights_fingerprint_sees_one_word_and_copies_nothing_whole(monkeypatch):
    """An in-memory model's identity is reduced where the weights lie: one changed word, two exchanged words,
    a renamed or reshaped tensor each change it, and no tensor larger than a scalar is moved or turned into bytes."""
    from corelib.fingerprints import weights_fingerprint

    torch.manual_seed(0)
    base = torch.nn.Sequential(torch.nn.Linear(64, 48), torch.nn.Linear(48, 3))
    fp = weights_fingerprint(base)
    assert weights_fingerprint(copy.deepcopy(base)) == fp
    nudged = copy.deepcopy(base)
    with torch.no_grad():
        w = nudged[0].weight
        w[5, 7] = torch.nextafter(w[5, 7], torch.tensor(9.0))  # one ulp: one word
    swapped = copy.deepcopy(base)
    with torch.no_grad():
        w = swapped[1].weight
        w[0, 0], w[2, 5] = base[1].weight[2, 5].item(), base[1].weight[0, 0].item()
    bf16 = copy.deepcopy(base).to(torch.bfloat16)
    renamed = torch.nn.Sequential(torch.nn.Linear(64, 48), torch.nn.Identity(), torch.nn.Linear(48, 3))
    renamed.load_state_dict({k.replace("1.", "2."): v for k, v in base.state_dict().items()})
    assert len({fp, *(weights_fingerprint(m) for m in (nudged, swapped, bf16, renamed))}) == 5

    moved = []
    for name in ("cpu", "numpy", "tolist"):
        original = getattr(torch.Tensor, name)
        monkeypatch.setattr(torch.Tensor, name, lambda t, *a, _o=original, **k: (moved.append(t.numel()), _o(t, *a, **k))[1])
    weights_fingerprint(base)
    assert max(moved, default=1) <= 1
