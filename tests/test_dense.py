import json
import shutil

import pytest
import torch

from corelib.data import load_collection, read_trec_run
from corelib.first_stage import first_stage
from corelib.dense import Encoder, bi_encoder_run, corpus_embeddings, dense_candidates, document_texts, read_settings
from corelib.catalogue import ModelLoadError


@pytest.fixture(scope="module")
def encoder():
    return Encoder("minilm-l6")


def test_settings_come_from_the_sentence_transformers_files(encoder, tmp_path):
    s = encoder.settings
    assert (s.pooling, s.normalize, s.max_length, s.lower_case) == ("mean", True, 256, False)
    cls_dir = tmp_path / "cls"
    shutil.copytree(encoder.directory, cls_dir)
    cfg = json.loads((cls_dir / "1_Pooling" / "config.json").read_text())
    cfg.update(pooling_mode_mean_tokens=False, pooling_mode_cls_token=True)
    (cls_dir / "1_Pooling" / "config.json").write_text(json.dumps(cfg))
    modules = [m for m in json.loads((cls_dir / "modules.json").read_text()) if not m["type"].endswith("Normalize")]
    (cls_dir / "modules.json").write_text(json.dumps(modules))
    assert read_settings(cls_dir).pooling == "cls" and not read_settings(cls_dir).normalize
    (cls_dir / "modules.json").unlink()
    with pytest.raises(ModelLoadError, match="no modules.json"):
        read_settings(cls_dir)


def test_fixed_sentences_against_reference_values(encoder):
    v = encoder.encode(["A man is eating food.", "A man is eating a piece of bread.", "A man is riding a horse."])
    # the first values of this implementation's embedding (mean pooling, normalised), written down once
    assert v[0, :4].tolist() == pytest.approx([0.03324, 0.00441, -0.00628, 0.04838], abs=2e-4)
    assert v.norm(dim=1).tolist() == pytest.approx([1.0, 1.0, 1.0], abs=1e-5)
    # sentence-transformers' documented similarity of the first two sentences for all-MiniLM-L6-v2: 0.7553
    assert float(v[0] @ v[1]) == pytest.approx(0.7553, abs=1e-3)
    assert float(v[0] @ v[2]) < 0.4
    with pytest.raises(TypeError, match="list of texts"):
        encoder.encode("one string")


def test_pooling_modes_on_a_hand_made_batch(encoder):
    hidden = torch.tensor([[[1.0, 0.0], [3.0, 2.0], [100.0, 100.0]]])  # the last token is padding
    mask = torch.tensor([[1, 1, 0]])
    from dataclasses import replace

    e = object.__new__(Encoder)
    for mode, expected in (("mean", [2.0, 1.0]), ("cls", [1.0, 0.0]), ("max", [3.0, 2.0])):
        e.settings = replace(encoder.settings, pooling=mode, normalize=False)
        assert e.pool(hidden, mask)[0].tolist() == pytest.approx(expected)
    e.settings = replace(encoder.settings, pooling="mean", normalize=True)
    assert float(e.pool(hidden, mask).norm()) == pytest.approx(1.0)


def test_dense_first_stage_run_round_trips_and_is_switchable(encoder, tiny_beir, tmp_path, monkeypatch):
    monkeypatch.setenv("CORELIB_CACHE", str(tmp_path / "cache"))
    c = load_collection("tiny", tiny_beir)
    cand = dense_candidates(c, 2, ["q1", "q2"], encoder, depth=3, run_dir=tmp_path / "runs")
    assert cand.ranking == {"q1": ["d1", cand.ranking["q1"][1]], "q2": ["d2", cand.ranking["q2"][1]]}
    (run_file,) = (tmp_path / "runs").iterdir()
    back = read_trec_run(run_file)  # the written run reads back: same order, same scores
    assert [d for d, _ in back["q1"]][:2] == cand.ranking["q1"] and len(back["q1"]) == 3
    assert [s for _, s in back["q1"]][:2] == pytest.approx(cand.scores["q1"], abs=1e-5)
    switched = first_stage(c, 2, ["q1", "q2"], method="dense", encoder=encoder)
    assert switched.ranking == cand.ranking and switched.source.startswith("dense (minilm-l6)")
    assert first_stage(c, 2, ["q1", "q2"]).source == "BM25 (bm25s) over the corpus"
    assert not any(p.suffix == ".trec" for p in (tiny_beir / "tiny").rglob("*"))  # never into the data directory
    with pytest.raises(ValueError, match="use one of bm25, dense"):
        first_stage(c, 2, ["q1"], method="splade")
    # the bi-encoder re-ranks the given candidates, encoding only them (no corpus embedding), each as the LLM reads it
    cand3 = first_stage(c, 3, ["q1"])
    with monkeypatch.context() as patched:
        patched.setattr("corelib.dense.corpus_embeddings", lambda *a, **k: pytest.fail("the corpus was encoded"))
        run = bi_encoder_run(encoder, c, cand3, words=100)
    assert max(run["q1"], key=run["q1"].get) == "d1" and set(run["q1"]) == {"d1", "d2", "d3"}
    assert document_texts(c, ["d1"], 2) == ["Sky\nThe sky"] and document_texts(c, ["d1"])[0].startswith("Sky The sky is")
    q = encoder.encode(["why is the sky blue"])[0]
    assert run["q1"]["d1"] == pytest.approx(float(q @ encoder.encode([c.document("d1", 100).text])[0]), abs=1e-5)
    short = bi_encoder_run(encoder, c, cand3, words=1)  # fewer words: other texts, other scores
    assert short["q1"]["d1"] != pytest.approx(run["q1"]["d1"], abs=1e-4)
    ids, emb = corpus_embeddings(encoder, c)
    assert ids == ["d1", "d2", "d3"] and emb.shape == (3, 384)
    assert len(list((tmp_path / "cache" / "dense").rglob("chunk-*.safetensors"))) == 1  # cached once


def test_pending_on_a_dense_profile_encodes_no_corpus(encoder, tiny_beir, shared_data, tmp_path, monkeypatch):
    """``pending`` reads file names only: with a dense first stage whose corpus is not encoded yet it counts the
    sample's records as missing instead of encoding the corpus (which takes minutes per collection on a CPU)."""
    from corelib.records import RecordStore
    from corelib.study import Study, profile

    monkeypatch.setenv("CORELIB_CACHE", str(tmp_path / "cache"))
    (tiny_beir / "nq-open-detection").symlink_to(shared_data / "nq-open-detection")
    p = profile("smoke", first_stage="dense", collections=("tiny",), multilingual=(), niah_needles=None, queries=2,
                detection_samples=2, negatives=3)
    S = Study(p, data=tiny_beir, out=tmp_path / "results", store=RecordStore(tmp_path / "records"))
    S._encoder = encoder
    m = p.models[0]
    with monkeypatch.context() as patched:
        patched.setattr(Encoder, "encode", lambda *a, **k: pytest.fail("pending encoded a corpus"))
        assert not S.candidates_cached("tiny") and S.candidates_cached("tiny", "bm25")
        before = S.pending().set_index("step")
    assert (before.loc["tiny", "needed"], before.loc["tiny", "missing"]) == (2, 2)
    assert S.query_ids(m, "tiny") == ["q1", "q2"]
    assert sorted(S.candidates(m, "tiny").ranking) == ["q1", "q2"]  # encodes the corpus once
    assert S.candidates_cached("tiny")
    after = S.pending().set_index("step")
    assert (after.loc["tiny", "needed"], after.loc["tiny", "missing"]) == (2, 2)  # the same count, now from the candidates
