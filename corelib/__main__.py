"""Command line: ``python -m corelib {rerank,detect,evaluate,warm}``."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

log = logging.getLogger("corelib")

DEFAULT_HEADS_DIR = Path("results") / "heads"


def head_set_path(heads_dir: Path, model_id: str, method: str) -> Path:
    return Path(heads_dir) / f"{model_id.replace('/', '__')}.{method}.json"


def _resolve_heads(spec: str, lm, heads_dir: Path):
    from .heads import HeadSet, released_heads

    if spec == "all":
        return "all"
    if ":" in spec and spec.split(":")[0] in ("core", "qr"):
        method, k = spec.split(":")
        path = head_set_path(heads_dir, lm.model_id, method)
        if path.is_file():
            return HeadSet.load(path).top(int(k))
        released = released_heads(lm.model_id, method)
        if released is not None:
            return released.top(min(int(k), len(released)))
        raise SystemExit(
            f"error: no {method} head set for {lm.model_id} at {path}: run "
            f"`python -m corelib detect --model {lm.model_id} --method {method} --out {path}` first"
        )
    path, _, k = spec.rpartition(":") if spec.rsplit(":", 1)[-1].isdigit() else (spec, "", "")
    hs = HeadSet.load(path)
    return hs.top(int(k)) if k else hs


def cmd_rerank(args) -> None:
    from .data import first_stage, load_collection, sample_queries, write_trec_run
    from .evaluate import evaluate_run
    from .models import load_model
    from .rerank import Reranker
    from .scoring import RecordStore

    collection = load_collection(args.collection, args.data)
    if not collection.has_corpus:
        raise SystemExit(f"error: {collection.name} has no corpus.jsonl in {collection.source}: re-ranking needs document texts")
    qids = sample_queries(collection, args.max_queries, args.seed)
    candidates = first_stage(collection, args.top_k, qids)
    lm = load_model(args.model, dtype=args.dtype, num_layers=args.num_layers)
    reranker = Reranker(lm, _resolve_heads(args.heads, lm, args.heads_dir), calibrate=not args.no_calibration,
                        top_k=args.top_k, words=args.words, store=None if args.no_cache else RecordStore(args.cache))
    run = reranker.rerank(collection, candidates, qids)
    if args.out:
        write_trec_run(run, args.out, tag=f"corelib-{lm.model_id}-{args.heads}")
    first = evaluate_run(candidates.run(), collection.qrels)["ndcg@10"]
    ours = evaluate_run(run, collection.qrels)["ndcg@10"]
    print(f"{collection.name}: {len(qids)} queries, top-{args.top_k}, {args.words} words, model {lm.model_id}")
    print(f"first stage ({candidates.source}) nDCG@10 {first:.4f}")
    print(f"re-ranked (heads {args.heads}) nDCG@10 {ours:.4f}")


def cmd_detect(args) -> None:
    from .data import load_detection
    from .heads import detect_heads
    from .models import load_model
    from .rerank import detection_records
    from .scoring import RecordStore

    samples = load_detection(args.data, args.samples, args.negatives, args.positions, words=args.words, seed=args.seed)
    lm = load_model(args.model, dtype=args.dtype, num_layers=args.num_layers)
    records = detection_records(lm, samples, calibrate=args.calibrated,
                                store=None if args.no_cache else RecordStore(args.cache))
    scores = detect_heads(records, args.method, temperature=args.temperature, calibrated=args.calibrated,
                          model_id=lm.model_id, provenance={"data": "nq-open-detection", "words": args.words})
    out = Path(args.out) if args.out else head_set_path(args.heads_dir, lm.model_id, args.method)
    hs = scores.head_set(lm.num_total_heads)
    hs.save(out)
    print(scores.table().head(args.show).to_string(index=False))
    print(f"wrote {len(hs)} ranked heads ({args.method}) to {out}")


def cmd_evaluate(args) -> None:
    from .data import load_collection, read_trec_run
    from .evaluate import evaluate_run

    collection = load_collection(args.collection, args.data)
    run = {q: dict(docs) for q, docs in read_trec_run(args.run).items()}
    for metric, value in evaluate_run(run, collection.qrels, tuple(args.metrics)).items():
        print(f"{metric} {value:.4f}")


def cmd_warm(args) -> None:
    from . import study

    p = study.profile(args.profile)
    models = args.model or list(p.models)
    unknown = sorted(set(models) - set(p.models))
    if unknown:
        raise ValueError(f"{unknown} not in profile {p.name!r} (its models: {', '.join(p.models)})")
    study.warm(p, models, args.data, multilingual=not args.no_multilingual)
    print(f"records of profile {p.name} cached for {', '.join(models)}")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m corelib", description=__doc__)
    parser.add_argument("-v", "--verbose", action="store_true")
    sub = parser.add_subparsers(dest="command", required=True)

    def common(p, model=True):
        p.add_argument("--data", default=None, help="data directory in BEIR layout (default: $CORELIB_DATA)")
        if model:
            p.add_argument("--model", default="smollm2-135m", help="built-in name, hub id or local directory")
            p.add_argument("--dtype", default=None, help="float32, bfloat16 or float16 (default: fp32 on CPU, bf16 on GPU)")
            p.add_argument("--num-layers", type=int, default=None, help="load only the first N decoder layers")
            p.add_argument("--heads-dir", type=Path, default=DEFAULT_HEADS_DIR)
            p.add_argument("--cache", default=None, help="record cache directory (default: $CORELIB_CACHE/records)")
            p.add_argument("--no-cache", action="store_true")
            p.add_argument("--seed", type=int, default=0)

    p = sub.add_parser("rerank", help="re-rank first-stage candidates and report nDCG@10")
    common(p)
    p.add_argument("--collection", required=True)
    p.add_argument("--top-k", type=int, default=20)
    p.add_argument("--words", type=int, default=300)
    p.add_argument("--max-queries", type=int, default=None)
    p.add_argument("--heads", default="all", help="all | core:K | qr:K | FILE.json[:K] (top K of a ranked head set)")
    p.add_argument("--no-calibration", action="store_true")
    p.add_argument("--out", default=None, help="write the re-ranked run (TREC format)")
    p.set_defaults(func=cmd_rerank)

    p = sub.add_parser("detect", help="score every head on the NQ detection set and save the ranking")
    common(p)
    p.add_argument("--method", choices=["core", "qr"], default="core")
    p.add_argument("--temperature", type=float, default=0.001)
    p.add_argument("--samples", type=int, default=100, help="detection queries")
    p.add_argument("--negatives", type=int, default=19)
    p.add_argument("--positions", type=int, default=2, help="positions of the positive per query")
    p.add_argument("--words", type=int, default=100)
    p.add_argument("--calibrated", action="store_true", help="use calibrated mass (an ablation)")
    p.add_argument("--show", type=int, default=10)
    p.add_argument("--out", default=None)
    p.set_defaults(func=cmd_detect)

    p = sub.add_parser("evaluate", help="evaluate a TREC run with ranx")
    common(p, model=False)
    p.add_argument("--collection", required=True)
    p.add_argument("--run", required=True)
    p.add_argument("--metrics", nargs="+", default=["ndcg@10", "recall@100"])
    p.set_defaults(func=cmd_evaluate)

    p = sub.add_parser("warm", help="compute and cache all records a profile's notebooks need (resumable)")
    common(p, model=False)
    p.add_argument("--profile", default="cpu")
    p.add_argument("--model", action="append", help="only this model of the profile (repeatable)")
    p.add_argument("--no-multilingual", action="store_true")
    p.set_defaults(func=cmd_warm)

    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    from .data import DataError
    from .models import ModelLoadError
    from .prompts import PromptError

    try:
        args.func(args)
    except (DataError, ModelLoadError, PromptError, ValueError, FileNotFoundError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
