"""Command line: ``python -m corelib {rerank,detect,build-detection-set,evaluate}`` (the study's ``warm`` is ``python -m corelib.study warm``)."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from .errors import UsageError
from .prompts import DEFAULT_WORDS

log = logging.getLogger("corelib")

def _check_cache(args) -> None:
    """The record cache must take new files before the first forward (not after it)."""
    from .storage import cache_root, check_cache_writable

    if not getattr(args, "no_cache", False):
        check_cache_writable(Path(args.cache) if args.cache else cache_root() / "records")


def _check_sizes(args) -> None:
    """Sizes and the output path, before any model loads or forward runs."""
    for name in ("max_queries", "words", "top_k", "samples", "negatives", "positions", "questions"):
        value = getattr(args, name, None)
        if value is not None and value < 1:
            raise UsageError(f"--{name.replace('_', '-')} {value}: it must be at least 1")


def _check_queries(spec, queries: dict[str, str]) -> None:
    """Before the first stage and the model: a query that is not valid Unicode, or that has more words than the model
    has positions (each word is at least one token), cannot make a prompt, whatever --words and --top-k say."""
    from .prompts import check_unicode

    limit = spec.max_positions
    for qid, text in queries.items():
        check_unicode(text, f"query {qid}")
        words = len(text.split())
        if limit is None:
            continue
        if words >= limit:
            raise UsageError(f"query {qid} has {words:,} words, more than the {limit:,} positions of {spec.model_id}: "
                            "no prompt can hold it (--words and --top-k limit the documents only); shorten or drop it")


def cmd_rerank(args) -> None:
    from .data import DataError, load_collection, sample_queries, write_trec_run
    from .first_stage import first_stage
    from .evaluate import evaluate_run
    from .heads import HeadSet, parse_heads
    from .models import model_spec
    from .records import RecordStore
    from .rerank import Reranker
    from .storage import check_output

    _check_sizes(args)
    head_spec = parse_heads(args.heads)
    if head_spec.path is not None:
        HeadSet.load(head_spec.path)  # a bad file is an error now, not after the first stage
    out = check_output(args.out) if args.out else None
    _check_cache(args)
    spec = model_spec(args.model, dtype=args.dtype, revision=args.revision, num_layers=args.num_layers)
    collection = load_collection(args.collection, args.data)
    if not collection.has_corpus:
        raise SystemExit(f"error: {collection.name} has no corpus.jsonl in {collection.source}: re-ranking needs document texts")
    qids = sample_queries(collection, args.max_queries, args.seed)
    if not qids:
        raise DataError(f"{collection.name}: no query has both a text and a relevant judgement (grade 1 or more) in "
                        f"its qrels ({len(collection.qrels)} judged queries): check qrels/test.tsv and queries.jsonl")
    empty = [q for q in qids if not collection.queries[q].strip()]
    if empty:
        raise DataError(f"{collection.name}: queries {empty[:5]} have an empty text: give them a text or remove them")
    _check_queries(spec, {q: collection.queries[q] for q in qids})
    encoder = None
    if args.first_stage == "dense":
        from .dense import Encoder

        encoder = Encoder(args.encoder)
    candidates = first_stage(collection, args.top_k, qids, method=args.first_stage, encoder=encoder)
    if not any(candidates.ranking.values()):
        raise DataError(f"{collection.name}: the first stage ({candidates.source}) has no candidate for any of the "
                        f"{len(qids)} sampled queries: its run shares no query id with the qrels")
    depth = max(len(d) for d in candidates.ranking.values())
    if depth < args.top_k:
        log.warning("%s: the first stage gives at most %d candidates per query, fewer than --top-k %d",
                    collection.name, depth, args.top_k)
    reranker = Reranker(spec, head_spec, calibrate=not args.no_calibration, top_k=args.top_k, words=args.words,
                        store=None if args.no_cache else RecordStore(args.cache), heads_dir=args.heads_dir)
    run = reranker.rerank(collection, candidates, list(candidates.ranking))
    first = evaluate_run(candidates.run(), collection.qrels)["ndcg@10"]
    ours = evaluate_run(run, collection.qrels)["ndcg@10"]
    print(f"{collection.name}: {len(run)} queries, top-{min(depth, args.top_k)} candidates, {args.words} words, model {spec.model_id}")
    print(f"first stage ({candidates.source}) nDCG@10 {first:.4f}")
    print(f"re-ranked (heads {args.heads}) nDCG@10 {ours:.4f}")
    if out is not None:
        write_trec_run(run, out, tag=f"corelib-{spec.model_id}-{args.heads.replace(' ', '_')}")
        print(f"wrote {out}")


def cmd_detect(args) -> None:
    from .checks import positive_finite
    from .heads import default_heads_dir, head_ranking_path
    from .models import model_spec
    from .storage import check_output

    _check_sizes(args)
    positive_finite(args.temperature, "--temperature", " (the paper uses 0.001 or 0.1)")
    spec = model_spec(args.model, dtype=args.dtype, revision=args.revision, num_layers=args.num_layers)
    out = check_output(args.out or head_ranking_path(args.heads_dir or default_heads_dir(), spec.model_id, args.method,
                                                     spec.fingerprint))
    _check_cache(args)
    if args.method == "niah":
        scores = _niah_scores(args, spec)
    else:
        scores = _detection_scores(args, spec)
    hs = scores.ranking()
    hs.save(out)
    print(scores.table().head(args.show).to_string(index=False))
    print(f"wrote the ranking of all {len(hs)} heads ({args.method}) to {out}; re-rank with --heads {out}:8")


def _niah_scores(args, spec):
    from .data import load_collection
    from .niah import NEEDLES, TrialStore, collection_haystack, niah_scores, run_trials, trial_grid

    if not 1 <= args.needles <= len(NEEDLES):
        raise UsageError(f"--needles {args.needles}: choose 1 to {len(NEEDLES)} (corelib.niah.NEEDLES)")
    limit = spec.max_positions
    if limit is not None and max(args.lengths) > limit:
        raise UsageError(f"--lengths {max(args.lengths)}: {spec.model_id} has {limit:,} positions; give context lengths up "
                         "to that")
    grid = trial_grid(NEEDLES[: args.needles], args.lengths, args.depths)
    haystack = collection_haystack(load_collection(args.haystack, args.data))
    results = run_trials(spec, grid, haystack, store=None if args.no_cache else TrialStore(args.cache),
                         progress="NIAH trials")
    counted = sum(r.counted() for r in results)
    print(f"NIAH: {len(results)} trials ({args.needles} needles x lengths {args.lengths} x depths {args.depths} in "
          f"{args.haystack}); {counted} retrieved the needle and count")
    return niah_scores(results, model_id=spec.model_id, fingerprint=spec.fingerprint,
                       provenance={"haystack": args.haystack, "lengths": args.lengths, "depths": args.depths})


def _detection_scores(args, spec):
    from .data import load_detection
    from .heads import detect_heads
    from .records import RecordStore
    from .rerank import detection_records

    samples = load_detection(args.data, args.samples, args.negatives, args.positions, words=args.words, seed=args.seed)
    records = detection_records(spec, samples, calibrate=args.calibrated, num_layers=args.num_layers,
                                store=None if args.no_cache else RecordStore(args.cache))
    return detect_heads(records, args.method, temperature=args.temperature, calibrated=args.calibrated, fingerprint=spec.fingerprint,
                        model_id=spec.model_id, provenance={"data": "nq-open-detection", "words": args.words})


def cmd_evaluate(args) -> None:
    from .data import load_collection, read_trec_run
    from .evaluate import check_metrics, evaluate_run

    check_metrics(args.metrics)
    collection = load_collection(args.collection, args.data)
    run = {q: dict(docs) for q, docs in read_trec_run(args.run).items()}
    for metric, value in evaluate_run(run, collection.qrels, tuple(args.metrics)).items():
        print(f"{metric} {value:.4f}")


def cmd_build_detection_set(args) -> None:
    from .detection_set import NQ_OPEN_ORACLE_URL, build_detection_set, read_nq_open, write_detection_set
    from .storage import check_output

    _check_sizes(args)
    out = Path(args.out)
    check_output(out / "nq-open-detection" / "detection.jsonl" if out.is_dir() else out)
    rows = build_detection_set(read_nq_open(args.source or NQ_OPEN_ORACLE_URL, args.questions), args.negatives, args.seed)
    print(write_detection_set(rows, out))


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
            p.add_argument("--revision", default=None, help="hub branch, tag or commit (hub ids only)")
            p.add_argument("--heads-dir", type=Path, default=None,
                           help="where core:K / qr:K rankings are read and detect writes (default: $CORELIB_HEADS or results/heads)")
            p.add_argument("--cache", default=None, help="record cache directory (default: $CORELIB_CACHE/records)")
            p.add_argument("--no-cache", action="store_true")
            p.add_argument("--seed", type=int, default=0)

    p = sub.add_parser("rerank", help="re-rank first-stage candidates and report nDCG@10")
    common(p)
    p.add_argument("--collection", required=True)
    p.add_argument("--top-k", type=int, default=20)
    p.add_argument("--first-stage", choices=["bm25", "dense"], default="bm25",
                   help="candidates from BM25 (the collection's run file, else bm25s) or dense retrieval (--encoder)")
    p.add_argument("--encoder", default="minilm-l6",
                   help="sentence encoder of the dense first stage: built-in minilm-l6, a directory or a hub id")
    p.add_argument("--words", type=int, default=DEFAULT_WORDS, help=f"words per document (default {DEFAULT_WORDS}, as the study)")
    p.add_argument("--max-queries", type=int, default=None)
    p.add_argument("--heads", default="all", help="all | core:K | qr:K | niah:K | FILE.json[:K] (top K of a ranking)")
    p.add_argument("--no-calibration", action="store_true")
    p.add_argument("--out", default=None, help="write the re-ranked run (TREC format)")
    p.set_defaults(func=cmd_rerank)

    p = sub.add_parser("detect", help="score every head (NQ detection set, or NIAH needle trials) and save the ranking")
    common(p)
    p.add_argument("--method", choices=["core", "qr", "niah"], default="core",
                   help="core, qr (NQ detection set) or niah (Wu et al.'s needle-in-a-haystack retrieval heads)")
    p.add_argument("--temperature", type=float, default=0.001)
    p.add_argument("--samples", type=int, default=100, help="detection queries")
    p.add_argument("--negatives", type=int, default=19)
    p.add_argument("--positions", type=int, default=2, help="positions of the positive per query")
    p.add_argument("--words", type=int, default=DEFAULT_WORDS)
    p.add_argument("--calibrated", action="store_true", help="use calibrated mass (an ablation)")
    p.add_argument("--needles", type=int, default=4, help="niah: the first N built-in needles")
    p.add_argument("--lengths", type=int, nargs="+", default=[1000, 2000], help="niah: context lengths in tokens")
    p.add_argument("--depths", type=float, nargs="+", default=[0.0, 0.25, 0.5, 0.75, 1.0], help="niah: needle depths in [0, 1]")
    p.add_argument("--haystack", default="adi", help="niah: collection whose corpus is the haystack")
    p.add_argument("--show", type=int, default=10)
    p.add_argument("--out", default=None)
    p.set_defaults(func=cmd_detect)

    p = sub.add_parser("build-detection-set", help="build nq-open-detection/detection.jsonl from the NQ-open oracle file")
    p.add_argument("--source", default=None,
                   help="a local nq-open-oracle.jsonl[.gz], or its URL (online, through datasets); default: the pinned URL")
    p.add_argument("--questions", type=int, default=1000, help="the first N questions (default 1000, as the stored set)")
    p.add_argument("--negatives", type=int, default=29, help="BM25-retrieved answer-free negatives per question")
    p.add_argument("--seed", type=int, default=0, help="seed of the random padding where BM25 finds too few")
    p.add_argument("--out", required=True, help="a data directory (writes nq-open-detection/detection.jsonl there) or a file")
    p.set_defaults(func=cmd_build_detection_set)

    p = sub.add_parser("evaluate", help="evaluate a TREC run with ranx")
    common(p, model=False)
    p.add_argument("--collection", required=True)
    p.add_argument("--run", required=True)
    p.add_argument("--metrics", nargs="+", default=["ndcg@10", "recall@100"])
    p.set_defaults(func=cmd_evaluate)

    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    from .errors import run_command

    return run_command(lambda: args.func(args))


if __name__ == "__main__":
    sys.exit(main())
