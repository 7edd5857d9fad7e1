"""Code paths that this machine cannot run at full size: the paper profile (a tiny random-weight
model from a local directory, a collection without a run file) and sharded record computation."""

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from corelib.records import RecordStore
from corelib.study import Study, profile

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.shared_data
def test_paper_profile_runs_end_to_end_on_a_stand_in(tmp_path, tiny_beir, tokenizer, shared_data):
    from tiny_models import tiny_model

    from transformers import Gemma3ForCausalLM, MistralForCausalLM

    dirs = {}
    for arch, causal_class in (("mistral", MistralForCausalLM), ("gemma3", Gemma3ForCausalLM)):
        dirs[arch] = tmp_path / f"tiny-{arch}"
        lm = tiny_model(arch, tokenizer)
        causal = causal_class(lm.backbone.config)  # saved with its LM head: NIAH decodes with it
        causal.model = lm.backbone
        causal.save_pretrained(dirs[arch])
        tokenizer.save_pretrained(dirs[arch])
    model_dir = dirs["mistral"]
    for name in ("nq-open-detection", "adi"):
        (tiny_beir / name).symlink_to(shared_data / name)
    import shutil

    shutil.copytree(tiny_beir / "tiny", tiny_beir / "tiny2")  # leave-one-collection-out needs two
    # two models, as the cpu profile has four: pooled tests, the claims matrix and the scaling view get a row each;
    # the gemma3 stand-in mixes sliding-window and global layers (sliding, full, sliding, full)
    p = profile("paper", models=(str(model_dir), str(dirs["gemma3"])), collections=("tiny", "tiny2"), multilingual=(), queries=2, top_k=3,
                words=20, detection_samples=2, negatives=3, positions=2, prune_levels=(0.0, 0.5), control_sets=20,
                niah_needles=1, niah_lengths=(100,), niah_depths=(0.5,), niah_prompt_lengths=(150,),
                encoder="minilm-l6")  # the paper's dense first stage, with the offline encoder (granite-embedding is on the hub)
    S = Study(p, data=tiny_beir, out=tmp_path / "results", store=RecordStore(tmp_path / "records"))
    m = str(model_dir)
    assert S.candidates(m, "tiny", "bm25").source == "BM25 (bm25s) over the corpus"  # no run file
    assert S.candidates(m, "tiny").source.startswith("dense (minilm-l6)")  # the paper profile's first stage
    t = S.tables
    t.collections(), t.prompt_lengths(), t.top_heads(), t.overlap(), t.detection_temperature()
    niah = t.niah_detection()  # a random-weight model copies no needle: NIAH-R is left out, said with the counts
    # a row per model and grid (the profile's lengths, then the prompts' length)
    assert niah["context lengths"].astype(str).tolist() == ["[100]", "[150]"] * 2
    assert niah["trials"].tolist() == [1] * 4 and niah["counted"].tolist() == [0] * 4
    assert "NIAH-R" not in S.head_methods(m) and "NIAH-R (prompt length)" not in S.head_methods(m)
    S.save_head_rankings()
    pq = t.per_query(sources=("nq", "in-domain", "in-domain, position-matched"))
    t.table1(pq)
    cmp = t.comparisons("table1", [t.compare(pq, t.table1_pairs(("nq", "in-domain", "in-domain, position-matched")))])
    assert {"ICR beats Dense", "Dense beats BM25", "CoRe-R beats QR-R (in-domain heads)"} <= set(cmp["claim"])
    family = cmp[cmp["claim"] == "CoRe-R beats ICR"].set_index("model")
    assert list(family.index) == [m, str(dirs["gemma3"]), "pooled (a query once)"]
    assert family.loc["pooled (a query once)", "queries"] == family.loc[m, "queries"]  # the same queries, counted once
    assert (family["p holm"] >= family["p"] - 1e-12).all()
    controls, _, dists = t.controls()
    sets = t.read("control_set_scores")  # every random set's score, so that the figure redraws from the tables alone
    assert len(sets) == controls["sets"].sum() and set(sets["model"]) == {m, str(dirs["gemma3"])}
    for (model, control), scores in dists.items():
        got = sets[(sets["model"] == model) & (sets["control"] == control)]["ndcg@10"].to_numpy()
        np.testing.assert_array_equal(got, scores)  # exact through the CSV
    from corelib.study import plots

    drawn = plots.control_figures(S)
    assert len([x for x in drawn if x.suffix == ".png" and x.is_file()]) == 2  # a figure per model
    t.in_domain_sources(pq)
    t.sweep()
    maps = t.head_score_maps()  # every head of every method, so that Figure 2 redraws from the tables alone
    g3 = maps[(maps["model"] == str(dirs["gemma3"])) & (maps["method"] == "core")]
    assert sorted(set(g3.loc[g3["global-attention layer"], "layer"])) == [1, 3] and maps[maps["model"] == m]["global-attention layer"].all()
    core = S.head_scores(m, "core")
    mine = maps[(maps["model"] == m) & (maps["method"] == "core")]
    assert [tuple(x) for x in mine[["layer", "head"]].to_numpy()] == core.order()
    assert len([x for x in plots.heatmap_figures(S) if x.suffix == ".png"]) >= 2  # S_CoRe per model (and NIAH-R's)
    depth = t.depth().set_index("model")
    assert depth.loc[m, "global-attention layers"] == "all" and depth.loc[str(dirs["gemma3"]), "global-attention layers"] == "[1, 3]"
    prune, ppq = t.pruning()
    t.comparisons("pruning", [t.pruning_margin(ppq)])
    t.ablations.temperature(), t.ablations.calibrated_detection(), t.ablations.negatives_positions(negatives=(1, 3))
    t.ablations.length_bias()
    from corelib.study import report

    scale = t.scaling()  # a row per model, read back from the tables above
    assert scale["model"].tolist() == [m, str(dirs["gemma3"])]
    assert scale["weights"].tolist() == ["forward in float32"] * 2  # no weight-file facts for a directory; its dtype
    assert scale["CoRe-R - ICR ci low"].iloc[0] <= scale["CoRe-R - ICR"].iloc[0] <= scale["CoRe-R - ICR ci high"].iloc[0]
    from corelib.study import plots

    plots.scaling(scale)
    v = report.verdicts(S)
    assert set(v["claim"]) >= {"CoRe-R beats ICR", "top heads in middle layers", "50% pruning within 0.5 point"}
    mine = v[v["model"] == m].set_index("claim")
    assert "p (loss <= 0.5)" in mine.loc["50% pruning within 0.5 point", "ours"]  # both tests shown
    out = report.write_report(S, S.out / p.name / "REPORT.md")
    text = out.read_text()
    appendix = (out.parent / report.APPENDIX_FILE).read_text()
    assert "## The claims" in text and "## Every verdict" in appendix and "## Every claim at a glance" in appendix
    cell = mine.loc["CoRe-R beats ICR"]
    glance = report.at_a_glance(v)
    assert list(glance.columns)[1:] == [m, str(dirs["gemma3"]), "pooled (a query once)"]
    assert f"| {cell['brief']}: {cell['verdict']} |" in appendix  # the matrix's cell is the verdict row's
    assert "**Attention window.** " + str(dirs["gemma3"]) + ": 2 of its 4 layers attend only to the last 24 tokens" in text
    assert "**Attention window.** " + m not in text
    from corelib.heads import HeadSet, head_ranking_path

    spec = S.spec(m)  # a local directory: its ranking file is named with its fingerprint, and carries it
    saved = head_ranking_path(S.heads_dir, spec.model_id, "core", spec.fingerprint)
    assert saved.name.startswith("tiny-mistral-") and HeadSet.load(saved).fingerprint == spec.fingerprint
    # one model recomputed alone (a narrowed study: `make reproduce MODEL=`) gives the full run's tables back, the
    # other model's rows kept and every family-wide column (Holm over the models, pooled rows) recomputed
    import pandas as pd

    names = ("per_query", "table1_average", "comparisons_table1", "controls", "control_set_scores", "control_positions",
             "head_scores", "depth", "pruning")
    before = {name: t.read(name) for name in names}
    g = str(dirs["gemma3"])
    N = Study(p, data=tiny_beir, out=tmp_path / "results", store=RecordStore(tmp_path / "records"), models=[g])
    assert N.other_models == (m,)
    n = N.tables
    npq = n.per_query(sources=("nq", "in-domain", "in-domain, position-matched"))
    n.table1(npq)
    n.comparisons("table1", [n.compare(npq, n.table1_pairs(("nq", "in-domain", "in-domain, position-matched")))])
    n.controls(), n.head_score_maps(), n.depth(), n.pruning()
    for name, df in before.items():
        pd.testing.assert_frame_equal(n.read(name), df, obj=name)


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
    # ablation), 2 NIAH trials (1 needle x 1 length x 2 depths) and 2 more at the prompts' length
    # + the order check: 3 records per collection with shuffled candidates; + the order remedies: 4 NQ detection
    # records under the invariant prompt (a query's two positive slots are one), 3 invariant records and 2 x 3 more
    # shuffles (K = 3) per collection
    assert len(files) == 4 * 2 + 4 + 4 + 4 * 2 + 2 + 2 + 2 * 3 + 4 + 2 * 3 + 2 * 2 * 3 and set(files) == set(others)
    from safetensors.torch import load_file

    for rel, path in files.items():
        a, b = load_file(path), load_file(others[rel])
        assert all(torch.equal(a[k], b[k]) for k in a), rel
