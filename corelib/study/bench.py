"""``make bench``: cost of attention extraction against a plain forward and the naive eager way.

Each configuration runs in its own process (so its peak RSS is its own) on the same real prompt;
times are medians of several runs and are reported as ratios to (a), the plain SDPA forward,
measured in the same invocation. Writes results/bench.json and results/bench.md.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

CONFIGS = {
    "a": "plain backbone forward (SDPA, no KV cache, no LM head): the floor",
    "b": "all-head query-span extraction",
    "c": "(b) + N/A calibration: the query and N/A suffixes packed after the shared prefix in one forward",
    "d": "naive: eager attention with output_attentions=True",
    "e50": "(b) on the model pruned by 50%",
    "pruned": "(b) on the first `layers` layers only, the later ones not loaded (notebook 6)",
    "eexit": "(b) with automatic exit at the deepest top-8 CoRe head",
}
TARGETS = {"b": (1.15, None), "c": (1.2, None), "e50": (0.55, 0.6)}
TARGET_MEMORY_LONGEST = {"b": 1.3, "c": 1.3}  # memory ratio at the longest prompt (extraction; with calibration)


def real_prompt(lm, tokens: int, data: str | None):
    """A real ICR prompt of about ``tokens`` tokens: SciFact BM25 candidates of one query, 100 words each."""
    from ..data import first_stage, load_collection, sample_queries
    from ..prompts import CONTENT_FREE_QUERY, build_prompt, prompt_order

    coll = load_collection("scifact", data)
    q = sample_queries(coll, 1, seed=0)[0]
    cand = first_stage(coll, 100, [q])
    docs = [coll.document(d, 100) for d in cand.ranking[q]]
    n = 1
    while n < len(docs):
        p = build_prompt(lm.tokenizer, coll.queries[q], prompt_order(docs[: n + 1]), lm.prefix, lm.suffix)
        if len(p.input_ids) > tokens:
            break
        n += 1
    ordered = prompt_order(docs[:n])
    return (build_prompt(lm.tokenizer, coll.queries[q], ordered, lm.prefix, lm.suffix),
            build_prompt(lm.tokenizer, CONTENT_FREE_QUERY, ordered, lm.prefix, lm.suffix))


NAIVE_LIMIT_GB = 8


def naive_attention_gb(model: str, tokens: int) -> float:
    """Memory that output_attentions holds: every layer's [H, T, T] fp32 map."""
    from transformers import AutoConfig

    from ..models import BUILTIN_MODELS, _converted_dir

    src = str(_converted_dir(model)) if model in BUILTIN_MODELS else model
    cfg = AutoConfig.from_pretrained(src)
    cfg = getattr(cfg, "text_config", None) or cfg
    return cfg.num_hidden_layers * cfg.num_attention_heads * tokens * tokens * 4 / 2**30


def deepest_top8(model: str) -> int:
    """Layers run to reach the deepest of the model's top-8 CoRe heads (its committed ranking). Without
    a ranking there is no early exit to time: a clear error, not a silent run of every layer."""
    from ..heads import resolve_heads

    try:
        return resolve_heads("core:8", model).deepest_layer + 1
    except FileNotFoundError as err:
        raise FileNotFoundError(f"the early exit (eexit) stops after the deepest top-8 CoRe head, and {err}") from None


def _proc_status_mb(field: str) -> float:
    """A memory field of /proc/self/status (Linux), else the peak RSS from getrusage."""
    try:
        return int(open("/proc/self/status").read().split(f"{field}:")[1].split()[0]) / 1024
    except (OSError, IndexError):
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def current_rss_mb() -> float:
    """Resident memory now."""
    return _proc_status_mb("VmRSS")


def peak_rss_mb() -> float:
    """Peak resident memory of this process image. Not getrusage's ru_maxrss: Linux carries that
    across exec from the parent that spawned the process (a notebook kernel holding GBs would set
    every worker's peak)."""
    return _proc_status_mb("VmHWM")


def busy_cpu_share(seconds: float = 0.5) -> float:
    """Share of all cores busy over the next ``seconds`` (Linux /proc/stat; 0 where unknown). Called
    while this process waits, it tells whether other processes would disturb a timing."""
    def snapshot():
        with open("/proc/stat") as f:
            values = [int(v) for v in f.readline().split()[1:]]
        return sum(values), values[3] + values[4]  # total, idle + iowait

    try:
        total0, idle0 = snapshot()
        time.sleep(seconds)
        total1, idle1 = snapshot()
    except (OSError, ValueError, IndexError):
        return 0.0
    return 1 - (idle1 - idle0) / max(total1 - total0, 1)


def machine_key() -> dict:
    """What a timing depends on besides its configuration: the device, torch's thread count, the CPU
    model and the torch version (a cached timing is reused only where all four match)."""
    cpu = ""
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), "")
    except OSError:
        pass
    device = torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu"
    return {"device": device, "threads": torch.get_num_threads(), "cpu": cpu or platform.machine(),
            "torch": torch.__version__}


def timed(fn, cuda: bool) -> float:
    """Seconds one call of ``fn`` takes (synchronised on CUDA)."""
    if cuda:
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    fn()
    if cuda:
        torch.cuda.synchronize()
    return time.perf_counter() - t0


def worker(model: str, config: str, tokens: int, repeats: int, data: str | None, layers: int | None = None) -> dict:
    """Run one configuration in this process; report the median time and this process's peak RSS.

    The prompt is built first with a one-layer copy of the model (tokenizer and chat markers);
    the resident memory after that (libraries, the SciFact corpus, the prompt) is the baseline
    that 'model+run' is measured from, so the data loaded for the prompt is not counted as the
    model's cost. ``layers``: the layers loaded for "pruned", the layers run for "eexit" (default:
    down to the deepest top-8 CoRe head in results/heads).
    """
    import gc

    from ..attention import calibrated_head_token_scores, head_token_scores
    from ..models import load_model, total_layers

    cuda = torch.cuda.is_available()
    total = total_layers(model)
    p, na = real_prompt(load_model(model, num_layers=1, device="cpu"), tokens, data)
    gc.collect()
    rss_base = current_rss_mb()
    if config == "pruned" and layers is None:
        raise ValueError("config 'pruned' needs layers: how many of the first layers to keep")
    loaded = {"e50": total // 2, "pruned": layers}.get(config)
    lm = load_model(model, num_layers=loaded)
    ids = torch.tensor([p.input_ids], device=lm.device)
    layers = (layers or deepest_top8(model)) if config == "eexit" else loaded

    def run():
        with torch.inference_mode():
            if config == "a":
                lm.backbone.set_attn_implementation("sdpa")
                lm.backbone(input_ids=ids, use_cache=False)  # a KV cache is not needed to score: not part of the floor
            elif config == "d":
                lm.backbone.set_attn_implementation("eager")
                out = lm.backbone(input_ids=ids, output_attentions=True, use_cache=False)
                s, e = p.query_span
                torch.stack([a[0, :, s:e].float().mean(1) for a in out.attentions])
            elif config == "c":
                calibrated_head_token_scores(lm, p.input_ids, p.query_span, na.input_ids, na.query_span)
            else:
                head_token_scores(lm, p.input_ids, p.query_span, None if config == "pruned" else layers)

    timed(run, cuda)  # warm-up
    times = [timed(run, cuda) for _ in range(repeats)]
    peak = peak_rss_mb()
    # on a GPU the model and the run live in GPU memory: its peak allocation is what is compared
    used = torch.cuda.max_memory_allocated() / 2**20 if cuda else peak - rss_base
    device = (f"{torch.cuda.get_device_name()} ({str(lm.dtype).removeprefix('torch.')})" if cuda
              else f"CPU, {torch.get_num_threads()} threads ({str(lm.dtype).removeprefix('torch.')})")
    return {"model": model, "config": config, "tokens": len(p.input_ids), "seconds": statistics.median(times),
            "max_rss_mb": peak, "baseline_rss_mb": rss_base, "model_and_run_mb": used, "layers": layers,
            "device": device}


def sweep_seconds(data: str | None, profile: str = "quick", queries: int = 100) -> dict:
    """(f) the notebook tweaks, from cached records held in memory (computed once if missing):
    a new temperature and head count re-computing the head table and Table 1 for the default model
    (target <= 5 s), and the head-count sweep over every head (target <= 1.5 s per 100 queries per order)."""
    import tempfile

    from .core import Study

    S = Study(profile, data=data, out=Path(tempfile.mkdtemp()) / "results")  # tables of the timing go to a scratch folder
    m = S.p.models[0]
    S.warm([m], multilingual=False)
    S.tables.per_query()  # records now in memory
    t0 = time.perf_counter()
    S.tables.top_heads(k=4, temperature=0.01)
    S.tables.table1(S.tables.per_query(k=4, temperature=0.01))
    t_tweak = time.perf_counter() - t0
    recs, qrels = [], {}
    for name in S.p.collections:
        for r in S.records(m, name):
            if len(recs) < queries:
                recs.append(r.__class__(**{**r.__dict__, "query_id": f"{name}:{r.query_id}"}))
        qrels.update({f"{name}:{q}": rel for q, rel in S.collection(name).qrels.items()})
    from .tables import sweep_curve

    order = S.head_scores(m, "core").order()
    t0 = time.perf_counter()
    curve = sweep_curve(recs, order, qrels)
    t_sweep = time.perf_counter() - t0
    return {"model": m, "config": "f", "queries": len(recs), "heads": len(order), "sweep_seconds": t_sweep,
            "sweep_seconds_per_100_queries": t_sweep * 100 / len(recs), "tweak_seconds": t_tweak,
            "seconds": t_sweep + t_tweak, "peak_heads": int(curve.argmax()) + 1, "profile": profile}


def worker_env() -> dict:
    """The worker's environment: glibc malloc serves blocks of 64 KiB and more with their own mmap
    and unmaps them when freed. By default it keeps freed heap and reuses it, so a process's peak
    resident memory depends on its allocation history, not only on the configuration (the same
    pruned SmolLM2 forward: 351-371 MB in three processes; ~1 MB apart with this setting)."""
    return {**os.environ, "MALLOC_MMAP_THRESHOLD_": os.environ.get("MALLOC_MMAP_THRESHOLD_", "65536")}


def measure(model: str, config: str, tokens: int, repeats: int = 3, data: str | None = None,
            layers: int | None = None) -> dict:
    """One configuration's worker result, run in a fresh process (so that its peak memory is its own);
    on failure a row with the error's last line."""
    cmd = [sys.executable, "-m", "corelib.study.bench", "--worker", model, config, str(tokens), "--repeats", str(repeats)]
    cmd += ["--data", str(data)] if data else []
    cmd += ["--layers", str(layers)] if layers else []
    out = subprocess.run(cmd, capture_output=True, text=True, env=worker_env())
    if out.returncode != 0:
        lines = out.stderr.strip().splitlines() or [f"exit status {out.returncode}"]
        return {"model": model, "config": config, "target_tokens": tokens, "error": lines[-1]}
    return {**json.loads(out.stdout.strip().splitlines()[-1]), "target_tokens": tokens}


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--models", nargs="+", default=["smollm2-135m", "qwen2.5-coder-0.5b"])
    ap.add_argument("--tokens", nargs="+", type=int, default=[1000, 2000, 4000, 8000])
    ap.add_argument("--configs", nargs="*", default=[c for c in CONFIGS if c != "pruned"], choices=list(CONFIGS))
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--data", default=None)
    ap.add_argument("--out", default="results")
    ap.add_argument("--no-sweep", action="store_true", help="skip (f), the cached-record sweeps")
    ap.add_argument("--sweep-profile", default="quick", help="profile whose default-model records (f) uses")
    ap.add_argument("--worker", nargs=3, metavar=("MODEL", "CONFIG", "TOKENS"))
    ap.add_argument("--layers", type=int, default=None, help="with --worker: layers kept (pruned) or run (eexit)")
    args = ap.parse_args(argv)
    if args.worker:
        m, c, t = args.worker
        print(json.dumps(worker(m, c, int(t), args.repeats, args.data, args.layers)))
        return
    rows = []
    for m in args.models:
        for t in args.tokens:
            for c in args.configs:
                if c == "d" and naive_attention_gb(m, t) > NAIVE_LIMIT_GB:
                    rows.append({"model": m, "config": c, "target_tokens": t,
                                 "error": f"skipped: eager output_attentions keeps ~{naive_attention_gb(m, t):.0f} GB of "
                                          f"attention maps (limit {NAIVE_LIMIT_GB} GB on this machine)"})
                    continue
                row = measure(m, c, t, args.repeats, args.data)
                rows.append(row)
                print(row, flush=True)
    sweep = None if args.no_sweep else sweep_seconds(args.data, args.sweep_profile)
    write_report(rows, sweep, Path(args.out), torch.__version__, " ".join(sys.argv[1:]))


def ratios(rows: list[dict]):
    """The measured rows with time and memory ratios to (a) of the same model and length, each
    target beside them and whether it is met."""
    import pandas as pd

    df = pd.DataFrame([r for r in rows if "error" not in r])
    base = df[df.config == "a"].set_index(["model", "target_tokens"])
    key = list(zip(df.model, df.target_tokens))
    df["time_ratio"] = df.seconds.values / base.loc[key, "seconds"].values
    df["memory_ratio"] = df.model_and_run_mb.values / base.loc[key, "model_and_run_mb"].values
    largest = df.groupby("model").target_tokens.transform("max")
    targets, verdicts = [], []
    for r, top in zip(df.itertuples(), largest):
        checks = []
        if r.config in TARGETS:
            t_time, t_mem = TARGETS[r.config]
            checks.append((f"time <= {t_time}", r.time_ratio <= t_time))
            if t_mem:
                checks.append((f"memory <= {t_mem}", r.memory_ratio <= t_mem))
        if r.config in TARGET_MEMORY_LONGEST and r.target_tokens == top:
            limit = TARGET_MEMORY_LONGEST[r.config]
            checks.append((f"memory <= {limit} (at the longest prompt)", r.memory_ratio <= limit))
        targets.append(", ".join(c for c, _ in checks))
        verdicts.append(", ".join("met" if ok else "MISSED" for _, ok in checks))
    return df.assign(target=targets, verdict=verdicts)


def write_report(rows: list[dict], sweep: dict | None, out: Path, torch_version: str, command: str = "",
                 notes: list[str] = ()) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / "bench.json").write_text(json.dumps({"command": f"python -m corelib.study.bench {command}", "rows": rows,
                                                "sweep": sweep}, indent=1))
    df = ratios(rows)
    lines = ["# Benchmark: extraction cost against a plain forward", "",
             f"Command: `python -m corelib.study.bench {command}`. Device: {', '.join(sorted(set(df.device)))}; torch {torch_version}; "
             "real SciFact prompts (BM25 candidates, 100 words each). Times are medians; ratios are to (a) at "
             "the same model and length, in the same run. Memory: each configuration runs in its own process; "
             "'model+run MB' is its peak RSS minus its resident memory after importing the libraries and "
             "building the prompt (corpus and prompt in memory, no model): the weights that the forward touches "
             "(transformers maps safetensors files, so only used embedding rows become resident), activations "
             "and caches; on a GPU it is the peak GPU allocation. The memory ratio compares that.", "",
             *[f"- ({k}) {v}" for k, v in CONFIGS.items() if k in {r["config"] for r in rows}], "",
             "| model | tokens | config | seconds | time ratio | peak RSS MB | model+run MB | memory ratio | target | verdict |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for r in df.itertuples():
        config = f"{r.config} ({int(r.layers)} layers)" if r.config == "eexit" else r.config
        lines.append(f"| {r.model} | {r.tokens} | {config} | {r.seconds:.3f} | {r.time_ratio:.2f} | "
                     f"{r.max_rss_mb:.0f} | {r.model_and_run_mb:.0f} | {r.memory_ratio:.2f} | {r.target} | {r.verdict} |")
    if sweep:
        ok_t = "met" if sweep["tweak_seconds"] <= 5 else "MISSED"
        ok_s = "met" if sweep["sweep_seconds_per_100_queries"] <= 1.5 else "MISSED"
        lines += ["", f"(f) notebook tweaks from records in memory, {sweep['model']} ({sweep['profile']} profile): a new "
                      f"temperature and head count re-compute the head table and Table 1 in {sweep['tweak_seconds']:.2f} s "
                      f"(target <= 5 s: {ok_t}); the head-count sweep over all {sweep['heads']} heads on {sweep['queries']} "
                      f"queries takes {sweep['sweep_seconds']:.2f} s, {sweep['sweep_seconds_per_100_queries']:.2f} s per 100 "
                      f"queries per order (target <= 1.5 s: {ok_s})."]
    errors = [r for r in rows if "error" in r]
    if errors:
        lines += ["", "Not measured:", *[f"- {e['model']} {e['config']} {e['target_tokens']}: {e['error']}" for e in errors]]
    if notes:
        lines += ["", *notes]
    (out / "bench.md").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
