"""Timing of one forward configuration in a process of its own: the shared measurement under ``make bench``,
``make bench-gpu`` and the pruning-cost table.

``measure`` runs ``worker`` in a fresh process (``python -m corelib.study.timing --worker ...``) so that
its peak memory is its own; ``timed``, ``busy_cpu_share`` and ``machine_key`` serve timings made in-process.
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

import torch

from ..errors import MissingInput, UsageError

CONFIGS = {
    "a": "plain backbone forward (SDPA, no KV cache, no LM head): the floor",
    "b": "all-head query-span extraction",
    "c": "(b) + N/A calibration: the query and N/A suffixes packed after the shared prefix in one forward",
    "d": "naive: eager attention with output_attentions=True",
    "e50": "(b) on the model pruned by 50%",
    "pruned": "(b) on the first `layers` layers only, the later ones not loaded (notebook 6)",
    "eexit": "(b) with automatic exit at the deepest top-8 CoRe head",
    "inv": "(c) on the same documents under the permutation-invariant prompt (each in its own block; one forward)",
}
def real_prompt(lm, tokens: int, data: str | None, invariant: bool = False):
    """A real ICR prompt of about ``tokens`` tokens: SciFact BM25 candidates of one query, 100 words each, and its N/A
    prompt (``invariant``: the same documents under the permutation-invariant prompt)."""
    from ..data import load_collection, sample_queries
    from ..first_stage import first_stage
    from ..prompts import CONTENT_FREE_QUERY, build_invariant_prompt, build_prompt, prompt_order

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
    build = build_invariant_prompt if invariant else build_prompt
    return (build(lm.tokenizer, coll.queries[q], ordered, lm.prefix, lm.suffix),
            build(lm.tokenizer, CONTENT_FREE_QUERY, ordered, lm.prefix, lm.suffix))


def deepest_top8(model: str) -> int:
    """Layers run to reach the deepest of the model's top-8 CoRe heads (its committed ranking). Without
    a ranking there is no early exit to time: a clear error, not a silent run of every layer."""
    from ..heads import resolve_heads

    try:
        return resolve_heads("core:8", model).deepest_layer + 1
    except FileNotFoundError as err:
        raise MissingInput(f"the early exit (eexit) stops after the deepest top-8 CoRe head, and {err}") from None


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


def worker(model: str, config: str, tokens: int, repeats: int, data: str | None, layers: int | None = None,
           dtype: str | None = None) -> dict:
    """Run one configuration in this process; report the median time and this process's peak RSS.

    The prompt is built first with a one-layer copy of the model (tokenizer and chat markers);
    the resident memory after that (libraries, the SciFact corpus, the prompt) is the baseline
    that 'model+run' is measured from, so the data loaded for the prompt is not counted as the
    model's cost. ``layers``: the layers loaded for "pruned", the layers run for "eexit" (default:
    down to the deepest top-8 CoRe head in results/heads). ``dtype``: the model's (default: fp32 on a CPU).
    """
    import gc

    from ..attention import calibrated_head_token_scores, head_token_scores, invariant_head_token_scores
    from ..models import dtype_name, load_model, total_layers

    cuda = torch.cuda.is_available()
    total = total_layers(model)
    p, na = real_prompt(load_model(model, num_layers=1, device="cpu"), tokens, data, invariant=config == "inv")
    gc.collect()
    rss_base = current_rss_mb()
    if config == "pruned" and layers is None:
        raise UsageError("config 'pruned' needs layers: how many of the first layers to keep")
    loaded = {"e50": total // 2, "pruned": layers}.get(config)
    lm = load_model(model, num_layers=loaded, dtype=dtype)
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
            elif config == "inv":
                invariant_head_token_scores(lm, p, na)
            else:
                head_token_scores(lm, p.input_ids, p.query_span, None if config == "pruned" else layers)

    timed(run, cuda)  # warm-up
    times = [timed(run, cuda) for _ in range(repeats)]
    peak = peak_rss_mb()
    # on a GPU the model and the run live in GPU memory: its peak allocation is what is compared
    used = torch.cuda.max_memory_allocated() / 2**20 if cuda else peak - rss_base
    device = (f"{torch.cuda.get_device_name()} ({dtype_name(lm.dtype)})" if cuda
              else f"CPU, {torch.get_num_threads()} threads ({dtype_name(lm.dtype)})")
    return {"model": model, "config": config, "tokens": len(p.input_ids), "seconds": statistics.median(times),
            "max_rss_mb": peak, "baseline_rss_mb": rss_base, "model_and_run_mb": used, "layers": layers,
            "device": device, "dtype": dtype_name(lm.dtype)}


def worker_env() -> dict:
    """The worker's environment: glibc malloc serves blocks of 64 KiB and more with their own mmap
    and unmaps them when freed. By default it keeps freed heap and reuses it, so a process's peak
    resident memory depends on its allocation history, not only on the configuration (the same
    pruned SmolLM2 forward: 351-371 MB in three processes; ~1 MB apart with this setting)."""
    return {**os.environ, "MALLOC_MMAP_THRESHOLD_": os.environ.get("MALLOC_MMAP_THRESHOLD_", "65536")}


def measure(model: str, config: str, tokens: int, repeats: int = 3, data: str | None = None,
            layers: int | None = None, dtype: str | None = None) -> dict:
    """One configuration's worker result, run in a fresh process (so that its peak memory is its own);
    on failure a row with the error's last line."""
    cmd = [sys.executable, "-m", "corelib.study.timing", "--worker", model, config, str(tokens), "--repeats", str(repeats)]
    cmd += ["--data", str(data)] if data else []
    cmd += ["--layers", str(layers)] if layers else []
    cmd += ["--dtype", dtype] if dtype else []
    out = subprocess.run(cmd, capture_output=True, text=True, env=worker_env())
    if out.returncode != 0:
        lines = out.stderr.strip().splitlines() or [f"exit status {out.returncode}"]
        return {"model": model, "config": config, "target_tokens": tokens, "error": lines[-1],
                **({"dtype": dtype} if dtype else {})}
    return {**json.loads(out.stdout.strip().splitlines()[-1]), "target_tokens": tokens}


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description="one timing worker (run by measure)")
    ap.add_argument("--worker", nargs=3, metavar=("MODEL", "CONFIG", "TOKENS"), required=True)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--data", default=None)
    ap.add_argument("--layers", type=int, default=None, help="layers kept (pruned) or run (eexit)")
    ap.add_argument("--dtype", default=None, help="float32 or bfloat16 (default: fp32 on a CPU)")
    args = ap.parse_args(argv)
    m, c, t = args.worker
    print(json.dumps(worker(m, c, int(t), args.repeats, args.data, args.layers, args.dtype)))


if __name__ == "__main__":
    main()
