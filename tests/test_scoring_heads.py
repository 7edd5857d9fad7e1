import json

import pytest
import torch

from corelib.heads import HeadSet, core_scores, detect_heads, qr_scores, released_heads
from corelib.records import QueryRecord
from corelib.scoring import cumulative_doc_scores, doc_scores, filtered_doc_sum


def make_record(token_scores, bounds, mass=None, positive=None, calibrated=True):
    L, H, _ = token_scores.shape
    n = len(bounds) - 1
    mass = mass if mass is not None else torch.zeros(L, H, n)
    return QueryRecord("q", [f"d{i}" for i in range(n)], torch.tensor(bounds), token_scores, mass,
                       torch.zeros_like(mass), calibrated, 10, positive)


def test_filter_drops_outlier_tokens_and_sums_the_rest():
    # doc 0: 20 tokens of 1.0 and one of -100 -> the -100 is below mean - 2 std and is dropped
    c = torch.tensor([1.0] * 20 + [-100.0] + [0.5, 0.5])
    out = filtered_doc_sum(c, torch.tensor([0, 21, 23]))
    assert out.tolist() == pytest.approx([20.0, 1.0])


def test_no_length_normalisation_and_empty_docs():
    c = torch.ones(7)
    assert filtered_doc_sum(c, torch.tensor([0, 2, 2, 7])).tolist() == [2.0, float("-inf"), 5.0]
    assert filtered_doc_sum(torch.tensor([3.0]), torch.tensor([0, 1])).tolist() == [3.0]


def test_an_empty_document_ranks_below_negative_calibrated_scores():
    # otherwise: an empty document scored 0 and ranked above a relevant document at -0.60
    c = torch.tensor([-0.6, -0.6, -2.0, -2.0])
    scores = filtered_doc_sum(c, torch.tensor([0, 2, 2, 4]))
    assert scores.argsort(descending=True).tolist() == [0, 2, 1]


def test_batched_filter_equals_the_per_document_definition():
    g = torch.Generator().manual_seed(0)
    lengths = torch.tensor([5, 0, 1, 30, 12, 7])
    bounds = torch.cat([torch.zeros(1, dtype=torch.long), lengths.cumsum(0)])
    c = torch.rand(4, int(bounds[-1]), generator=g, dtype=torch.float64) ** 4
    c[:, 10:20] = -1.0  # outliers inside document 3
    expected = torch.zeros(4, len(lengths), dtype=torch.float64)
    for i in range(len(lengths)):
        seg = c[:, bounds[i] : bounds[i + 1]]
        if seg.shape[-1] > 1:
            keep = seg > seg.mean(-1, keepdim=True) - 2 * seg.std(-1, keepdim=True)
            expected[:, i] = (seg * keep).sum(-1)
        else:
            expected[:, i] = seg.sum(-1) if seg.shape[-1] else float("-inf")  # an empty document ranks last
    assert torch.allclose(filtered_doc_sum(c, bounds), expected)
    assert filtered_doc_sum(c, bounds)[:, 3].lt(c[:, 6:36].clamp(min=0).sum(-1)).all()  # outliers dropped


def test_heads_are_summed_before_the_filter():
    ts = torch.zeros(2, 2, 4)
    ts[0, 0] = torch.tensor([1.0, 2.0, 3.0, 4.0])
    ts[1, 1] = torch.tensor([4.0, 3.0, 2.0, 1.0])
    rec = make_record(ts, [0, 2, 4])
    assert doc_scores(rec).tolist() == [10.0, 10.0]
    assert doc_scores(rec, [(0, 0)]).tolist() == [3.0, 7.0]
    cum = cumulative_doc_scores(rec, [(1, 1), (0, 0), (0, 1)])
    assert cum.tolist() == [[7.0, 3.0], [10.0, 10.0], [10.0, 10.0]]


def test_core_score_limits():
    # two samples, one head prefers the positive in both, one in neither, one equal everywhere
    mass = torch.tensor([[[[0.9, 0.1, 0.0], [0.0, 0.5, 0.4], [0.3, 0.3, 0.3]]],
                         [[[0.2, 0.7, 0.1], [0.0, 0.1, 0.9], [0.3, 0.3, 0.3]]]], dtype=torch.float64)  # [S=2, L=1, H=3, N=3]
    pos = torch.tensor([0, 1])
    sharp = core_scores(mass, pos, 1e-4)[0].tolist()
    assert sharp == pytest.approx([1.0, 0.0, 1 / 3], abs=1e-6)  # t -> 0: share of wins (ties split)
    assert core_scores(mass, pos, 1e4)[0].tolist() == pytest.approx([1 / 3] * 3, abs=1e-4)  # t -> inf: 1/(M+1)
    assert qr_scores(mass, pos)[0].tolist() == pytest.approx([0.8, 0.05, 0.3])
    for bad in (0, -0.1, float("nan"), float("inf")):
        with pytest.raises(ValueError, match="temperature"):
            core_scores(mass, pos, bad)
    with pytest.raises(TypeError, match="give a number"):
        core_scores(mass, pos, "0.01")


def test_detect_heads_ranks_and_records_provenance():
    L, H, N = 3, 2, 4
    recs = []
    for i in range(6):
        mass = torch.rand(L, H, N, generator=torch.Generator().manual_seed(i)) * 0.1
        p = i % N
        mass[1, 0, p] = 0.5  # head (1,0) always attends most to the positive
        mass[2, 1, :] = 0.0
        mass[2, 1, p] = 0.2
        mass[2, 1, (p + 1) % N] = 0.9  # more absolute mass on the positive than most, but never the top
        recs.append(make_record(torch.zeros(L, H, 1), [0] + [1] * N, mass, positive=p))
    core = detect_heads(recs, "core", temperature=0.001, model_id="m")
    qr = detect_heads(recs, "qr", model_id="m")
    assert core.order()[0] == (1, 0) and qr.order()[0] == (1, 0)
    assert core.table().loc[lambda d: (d["layer"] == 2) & (d["head"] == 1), "score"].item() < 0.01
    assert qr.order()[1] == (2, 1)  # QR rewards absolute mass, CoRe does not
    assert core.provenance["samples"] == 6 and core.provenance["negatives"] == 3
    with pytest.raises(ValueError, match="unknown method"):
        detect_heads(recs, "bogus")


def test_head_sets_roundtrip_and_checks(tmp_path):
    hs = HeadSet([(1, 2), (0, 1)], "smollm2-135m", "core", {"temperature": 0.01})
    path = hs.save(tmp_path / "h.json")
    back = HeadSet.load(path)
    assert back.heads == [(1, 2), (0, 1)] and back.deepest_layer == 1
    assert json.loads(path.read_text())["heads"] == [[1, 2], [0, 1]]
    with pytest.raises(ValueError, match="detected on smollm2-135m, not on other"):
        back.check("other", 30, 9)
    with pytest.raises(ValueError, match="outside"):
        HeadSet([(30, 0)], "smollm2-135m").check("smollm2-135m", 30, 9)


# the paper's published top 8 (METHOD.md), which the released score files must reproduce
PUBLISHED_TOP8 = {
    "mistralai/Mistral-7B-Instruct-v0.2": "15-21,15-1,16-12,15-7,9-26,12-11,12-7,18-0",
    "meta-llama/Llama-3.1-8B-Instruct": "13-18,13-1,14-13,13-21,14-31,13-13,8-11,14-20",
    "microsoft/phi-4": "17-1,23-1,19-5,19-29,19-34,19-0,18-6,19-7",
    "ibm-granite/granite-3.2-8b-instruct": "19-1,17-20,19-19,34-28,17-25,17-7,19-4,19-31",
}


def test_released_scores_give_the_published_top_heads(shared_data):
    from corelib.heads import released_scores

    for model, top in PUBLISHED_TOP8.items():
        ranking = released_heads(model, data=shared_data)
        assert ranking.ranking and [f"{l}-{h}" for l, h in ranking.top(8).heads] == top.split(",")
    assert len(released_heads("Llama-3.1-8B-Instruct", "qr")) == 16
    pruned = released_scores("Mistral-7B-Instruct-v0.2", 0.5, shared_data)
    assert pruned.scores.shape == (16, 32) and pruned.provenance["kept layers"] == 16


def test_a_damaged_release_file_is_refused(tmp_path, shared_data):
    from corelib.data import DataError
    from corelib.heads import released_scores

    src = shared_data / "core-released-heads" / "mistral" / "core_temp0.001_prune0.0.json"
    dst = tmp_path / "core-released-heads" / "mistral" / src.name
    dst.parent.mkdir(parents=True)
    data = json.loads(src.read_text())
    data.pop("3-4")
    dst.write_text(json.dumps(data))
    with pytest.raises(DataError, match="1 heads have no score"):
        released_scores("mistralai/Mistral-7B-Instruct-v0.2", 0.0, tmp_path)
    data["3-4"], data["40-0"] = 0.1, 0.2
    dst.write_text(json.dumps(data))
    with pytest.raises(DataError, match="outside"):
        released_scores("mistralai/Mistral-7B-Instruct-v0.2", 0.0, tmp_path)




def test_core_8_resolves_from_any_directory_with_each_heads_score(tmp_path, monkeypatch):
    """The built-in models' rankings ship with the package (with each head's score): ``core:8`` works outside the
    repository, and a ranking of one's own in ./results/heads or $CORELIB_HEADS still comes first."""
    from conftest import REPO
    from corelib.heads import HeadSet, resolve_heads
    from corelib.models import model_spec

    spec = model_spec("smollm2-135m")
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("CORELIB_HEADS", raising=False)
    got = resolve_heads("core:8", spec.model_id, None, spec.fingerprint)
    committed = HeadSet.load(REPO / "results" / "heads" / "smollm2-135m.core.json")
    assert got.heads == committed.heads[:8] and len(got.scores) == 8 and got.scores == sorted(got.scores, reverse=True)
    own = tmp_path / "results" / "heads"
    HeadSet([(0, 1), (0, 2)], spec.model_id, "core", ranking=True, fingerprint=spec.fingerprint).save(
        own / "smollm2-135m.core.json")
    assert resolve_heads("core:2", spec.model_id, None, spec.fingerprint).heads == [(0, 1), (0, 2)]
