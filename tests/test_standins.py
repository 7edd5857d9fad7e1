"""Code paths that this machine cannot run at full size: the paper profile (a tiny random-weight
model from a local directory, a collection without a run file) and sharded record computation."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from corelib.records import RecordStore
from corelib.study import Study, profile

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.shared_data
def test_paper_profile_runs_end_to_end_on_a_stand_in(tmp_path, tiny_beir, tokenizer, shared_data):
    from tiny_models import tiny_model

    from transformers import MistralForCausalLM

    model_dir = tmp_path / "tiny-mistral"
    lm = tiny_model("mistral", tokenizer)
    causal = MistralForCausalLM(lm.backbone.config)  # saved with its (untied) LM head: NIAH decodes with it
    causal.model = lm.backbone
    causal.save_pretrained(model_dir)
    tokenizer.save_pretrained(model_dir)
    for name in ("nq-open-detection", "adi"):
        (tiny_beir / name).symlink_to(shared_data / name)
    import shutil

    shutil.copytree(tiny_beir / "tiny", tiny_beir / "tiny2")  # leave-one-collection-out needs two
    p = profile("paper", models=(str(model_dir),), collections=("tiny", "tiny2"), multilingual=(), queries=2, top_k=3,
                words=20, detection_samples=2, negatives=3, positions=2, prune_levels=(0.0, 0.5), control_sets=20,
                niah_needles=1, niah_lengths=(100,), niah_depths=(0.5,),
                encoder="minilm-l6")  # the paper's dense first stage, with the offline encoder (granite-embedding is on the hub)
    S = Study(p, data=tiny_beir, out=tmp_path / "results", store=RecordStore(tmp_path / "records"))
    m = str(model_dir)
    assert S.candidates(m, "tiny", "bm25").source == "BM25 (bm25s) over the corpus"  # no run file
    assert S.candidates(m, "tiny").source.startswith("dense (minilm-l6)")  # the paper profile's first stage
    t = S.tables
    t.collections(), t.prompt_lengths(), t.top_heads(), t.overlap(), t.detection_temperature()
    niah = t.niah_detection()  # a random-weight model copies no needle: NIAH-R is left out, said with the counts
    assert niah["trials"].tolist() == [1] and niah["counted"].tolist() == [0] and "NIAH-R" not in S.head_methods(m)
    S.save_head_rankings()
    pq = t.per_query(sources=("nq", "in-domain", "in-domain, position-matched"))
    t.table1(pq)
    cmp = t.comparisons("table1", [t.compare(pq, t.table1_pairs(("nq", "in-domain", "in-domain, position-matched")))])
    assert {"ICR beats Dense", "Dense beats BM25", "CoRe-R beats QR-R (in-domain heads)"} <= set(cmp["claim"])
    t.controls()
    t.in_domain_sources(pq)
    t.sweep()
    t.depth()
    prune, ppq = t.pruning()
    t.comparisons("pruning", [t.pruning_margin(ppq)])
    t.ablations.temperature(), t.ablations.calibrated_detection(), t.ablations.negatives_positions(negatives=(1, 3))
    t.ablations.length_bias()
    from corelib.study import report

    scale = t.scaling()  # one model: one row, read back from the tables above
    assert scale["model"].tolist() == [m]
    assert scale["CoRe-R - ICR ci low"].iloc[0] <= scale["CoRe-R - ICR"].iloc[0] <= scale["CoRe-R - ICR ci high"].iloc[0]
    from corelib.study import plots

    plots.scaling(scale)
    v = report.verdicts(S)
    assert set(v["claim"]) >= {"CoRe-R beats ICR", "top heads in middle layers", "50% pruning within 0.5 point"}
    assert "p (loss <= 0.5)" in v.set_index("claim").loc["50% pruning within 0.5 point", "ours"]  # both tests shown
    out = report.write_report(S, S.out / p.name / "REPORT.md")
    text = out.read_text()
    assert "## Verdicts" in text and "## Claims at a glance" in text
    cell = v.set_index("claim").loc["CoRe-R beats ICR"]
    assert f"| {cell['brief']}: {cell['verdict']} |" in text  # the matrix's cell is the verdict row's
    assert (S.heads_dir / "tiny-mistral.core.json").is_file()


@pytest.mark.shared_data
def test_two_processes_make_the_same_records_as_one(tmp_path, shared_data):
    env = {**os.environ, "CORELIB_DATA": str(shared_data), "OMP_NUM_THREADS": "1", "CORELIB_PROGRESS": "off"}
    args = ["-m", "corelib.study", "warm", "--profile", "smoke", "--no-multilingual"]
    one = subprocess.run([sys.executable, *args], env={**env, "CORELIB_CACHE": str(tmp_path / "one")},
                         capture_output=True, text=True, cwd=REPO, timeout=900)
    assert one.returncode == 0, one.stderr
    two = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--master-port", "29517",
                          *args], env={**env, "CORELIB_CACHE": str(tmp_path / "two")},
                         capture_output=True, text=True, cwd=REPO, timeout=900)
    assert two.returncode == 0, two.stderr
    assert "shard 1 of 2" in two.stdout and "shard 2 of 2" in two.stdout
    files = {p.relative_to(tmp_path / "one" / "records"): p for p in (tmp_path / "one" / "records").rglob("*.safetensors")}
    others = {p.relative_to(tmp_path / "two" / "records"): p for p in (tmp_path / "two" / "records").rglob("*.safetensors")}
    # detection 4 x 2 positions, 4 + 4 collection records, the same detection prompts calibrated (notebook 9's
    # ablation), 2 NIAH trials (1 needle x 1 length x 2 depths)
    assert len(files) == 4 * 2 + 4 + 4 + 4 * 2 + 2 and set(files) == set(others)
    from safetensors.torch import load_file

    for rel, path in files.items():
        a, b = load_file(path), load_file(others[rel])
        assert all(torch.equal(a[k], b[k]) for k in a), rel
