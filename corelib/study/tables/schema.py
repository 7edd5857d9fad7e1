"""Every table's columns (defined once, here), and how a table is written to and read from the study's
tables folder. The report reads tables through ``read``, with the same columns."""

from __future__ import annotations

import hashlib
import json
import logging
from typing import TYPE_CHECKING, Callable

import numpy as np
import pandas as pd

from ...errors import MissingInput, UsageError
from ...storage import atomic_write_text
from ..analysis import SCALING_DEPTH
from ..methods import TABLE1

if TYPE_CHECKING:
    from ..core import Study

log = logging.getLogger(__name__)


# BM25 and Dense: first stages (nDCG@10 of their own top-k for the same queries); Bi-encoder: the profile's
# encoder re-ranking the same candidates as the LLM methods. NIAH-R: NaN where a model has none (too few needles).
METHODS = TABLE1  # Table 1's method columns (methods.TABLE1)

COLUMNS: dict[str, tuple[str, ...]] = {
    "collections": ("collection", "documents", "judged queries", "first stage", "BM25 nDCG@10 (all queries)"),
    "prompt_lengths": ("model", "layers", "heads per layer", "kv heads", "collection", "mean tokens", "max tokens"),
    "top_heads": ("model", "method", "head source", "rank", "layer", "head", "score", "relative depth"),
    # every head of every method (Figure 2's maps); "temperature": CoRe's (empty for the others)
    "head_scores": ("model", "method", "head source", "temperature", "rank", "layer", "head", "score", "relative depth",
                    "global-attention layer"),
    "niah_detection": ("model", "haystack", "needles", "context lengths", "depths", "trials", "counted",
                       "counted share", "mean recall", "decode tokens (max)", "heads above 0", "ties broken by",
                       "decode seconds"),
    "overlap": ("model", "head source", "k", "CoRe and QR share", "CoRe and NIAH share", "QR and NIAH share"),
    "detection_temperature": ("model", "temperature", "top-k shared with the profile's t", "spearman vs the profile's t",
                              "best head"),
    "per_query": ("model", "first stage", "collection", "query_id", "method", "head source", "k", "ndcg@10"),
    "table1": ("model", "first stage", "collection", "queries", *METHODS, "CoRe-R - ICR", "CoRe-R - QR-R",
               "CoRe-R - NIAH-R", "CoRe-R - Bi-encoder"),
    "table1_average": ("model", "first stage", "collections", "queries", *METHODS),
    "table2": ("model", "first stage", "collection", "data", "queries", *METHODS, "CoRe-R - ICR", "CoRe-R - QR-R",
               "CoRe-R - NIAH-R", "CoRe-R - Bi-encoder"),
    "table2_average": ("model", "first stage", "collections", "queries", *METHODS),
    # "p inferior"/"p holm inferior": margin claims only (the one-sided test of loss <= margin, which can
    # contradict them); empty for the others
    # "(family)": at the level Holm tests the row in its claim's family (analysis.family_columns), the interval
    # that agrees with the verdict; "ci low"/"ci high" and "detectable (80% power)" are the unadjusted ones
    "comparisons": ("claim", "model", "a", "b", "head source", "difference", "ci low", "ci high", "p", "p holm",
                    "p inferior", "p holm inferior", "detectable (80% power)", "queries", "collections", "verdict",
                    "ci low (family)", "ci high (family)", "detectable (80% power, family)"),
    "in_domain_sources": ("model", "head source", "CoRe and QR share", "CoRe-R", "QR-R", "ICR", "CoRe-R - QR-R",
                          "CoRe-R - ICR"),
    "positive_slots": ("collection", "model", "slot", "positives"),
    "controls": ("model", "control", "sets", "median", "p5", "p95", "distinct sets", "mean CoRe heads shared", "smallest p"),
    # every random head set's score (the distributions the controls figure draws), one row per set
    "control_set_scores": ("model", "control", "set", "ndcg@10"),
    # "monte carlo error": the standard error of the deciding Holm-adjusted empirical p over redraws of the sets (0 when
    # every distinct set was drawn: an enumeration)
    "control_positions": ("model", "control", "method", "ndcg@10", "percentile", "p better", "p worse", "p better holm",
                          "p worse holm", "monte carlo error", "verdict"),
    "sweep": ("model", "collection", "order", "heads", "ndcg@10"),
    "sweep_peaks": ("model", "collection", "order", "peak ndcg@10", "heads at peak", "1 head", "8 heads", "ICR",
                    "Layer window", "Layer window heads"),
    # the middle-third test counts distinct top layers ("of them in middle third"); "in middle third" counts the heads
    "depth": ("model", "layers", "top heads", "top layers", "in middle third", "distinct top layers",
              "of them in middle third", "median relative depth", "p more", "p fewer", "p more holm", "p fewer holm",
              "verdict", "global-attention layers", "top heads in global layers", "largest share keeping the top layers"),
    "pruning": ("model", "method", "pruned share", "kept layers", "ndcg@10", "deepest head", "level"),
    "practitioner_cost": ("model", "collection", "method", "queries timed", "seconds per query", "ratio to bi-encoder (cold)",
                          "nDCG@10 (mean over collections)", "device"),
    "pruning_cost": ("model", "run", "pruned share", "kept layers", "tokens", "seconds", "model and run MB",
                     "latency ratio", "memory ratio", "device", "measured"),
    "ablation_temperature": ("model", "temperature", "CoRe-R nDCG@10"),
    "ablation_calibrated_detection": ("model", "method", "calibrated detection", "nDCG@10"),
    "ablation_negatives_positions": ("model", "ablation", "nDCG@10"),
    "ablation_length_bias": ("model", "collection", "method", "spearman(score, length)", "top-1 length / mean length"),
    "order_per_query": ("model", "collection", "query_id", "order", "method", "ndcg@10", "kendall tau vs BM25"),
    "order_agreement": ("model", "order", "method", "queries", "mean ndcg@10", "correlation with BM25 (per-query ndcg@10)",
                        "kendall tau vs BM25 (mean)"),
    # the order remedies (order_remedies.py): per query, order, remedy and method; BM25 and the bi-encoder under
    # remedy "none" in both orders
    "order_remedies": ("model", "collection", "query_id", "order", "remedy", "method", "ndcg@10"),
    "order_remedy_means": ("model", "order", "remedy", "method", "queries", "ndcg@10", "forwards per query"),
    "order_remedy_heads": ("model", "method", "heads", "shared with ICR's prompt", "layers (invariant prompt)",
                           "layers (ICR's prompt)"),
    "forest": ("claim", "model", "collection", "difference", "ci low", "ci high", "queries"),
    "leave_one_out": ("claim", "model", "left out", "difference", "ci low", "ci high", "p", "queries", "collections"),
    # the precision check of a dtype against fp32 (precision.py): per method, and Table 1's verdicts under both
    "precision": ("model", "dtype", "method", "head source", "queries", "ndcg@10 fp32", "ndcg@10 (new dtype)",
                  "difference (points)", "queries within 0.05", "largest change", "checked", "mean within 0.5 point",
                  "95% of queries within", "passes", "failed"),
    "precision_verdicts": ("model", "dtype", "claim", "head source", "difference fp32", "difference (new dtype)",
                           "verdict fp32", "verdict (new dtype)", "unchanged"),
    # a model's rows recomputed on another machine in the same dtype, against an earlier run's committed rows
    # (precision.machine_check): per per-query table and method the same rule, whether each query's score is
    # identical, whether every method's set of top heads is the same; every comparison table's verdicts
    "machine_check": ("model", "dtype", "reference commit", "reference machine", "commit", "machine", "table",
                      "method", "head source", "queries", "ndcg@10 reference", "ndcg@10 (this run)", "difference (points)",
                      "queries within 0.05", "queries identical", "largest change", "checked", "mean within 0.5 point",
                      "95% of queries within", "top heads unchanged", "passes", "failed"),
    "machine_check_verdicts": ("model", "dtype", "table", "claim", "head source", "difference reference",
                               "difference (this run)", "verdict reference", "verdict (this run)", "unchanged"),
    "first_stage_agreement": ("model", "method", "queries", "correlation with BM25 (per-query ndcg@10)"),
    "released_depth": ("model", "source", "layers", "top heads", "top layers", "in middle third", "distinct top layers",
                       "of them in middle third", "median relative depth", "p more", "p fewer", "p more holm",
                       "p fewer holm", "verdict", "largest share keeping the top layers"),
    "released_pruning": ("model", "source", "pruned share", "kept layers", "layers", "unpruned top heads in kept layers",
                         "re-detected top heads shared with unpruned", "top heads", "deepest top layer",
                         "top-k share of all heads (%)"),
    # "estimate": a comparison's difference in points (empty for the depth and control rows, whose brief says it all)
    "verdicts": ("claim", "model", "paper", "ours", "verdict", "brief", "estimate"),
    # the primary claims' pooled tests, Holm over them (tables.primary), and the models' unweighted mean and range
    "primary_claims": ("claim", "table", "difference", "ci low", "ci high", "p", "p inferior", "queries",
                       "verdict (family)", "mean of models", "models min", "models max", "models", "p holm (primary)",
                       "p holm inferior (primary)", "verdict (primary)"),
    # "methods": empty for the run that computed every row of the model; else the methods a later command
    # recomputed alone (the record-free ones: ``tables.table1.refresh_record_free``)
    "provenance": ("model", "command", "commit", "date", "machine", "dtype", "methods"),
    "scaling": ("model", "parameters", "family", "tuning", "weights", "queries", "BM25", "ICR", "QR-R", "CoRe-R",
                "NIAH-R", "random 8 heads (median)", "CoRe-R - ICR", "CoRe-R - ICR ci low", "CoRe-R - ICR ci high",
                "CoRe-R - QR-R", "CoRe-R - QR-R ci low", "CoRe-R - QR-R ci high", SCALING_DEPTH, "CoRe-R kept at 50% pruning"),
}


def base_table(name: str) -> str:
    """``comparisons_*`` and ``per_query_*`` tables share their base table's columns."""
    return next((base for base in ("comparisons", "per_query") if name.startswith(base + "_")), name)


def columns(name: str) -> list[str]:
    return list(COLUMNS[base_table(name)])


# Columns computed over a whole table, a family of tests across models (Holm over the models, and the verdicts
# that read it): table name -> f(study, df) -> df, registered by the module that builds the table (``family``).
# ``write`` applies it to every row the table holds, the other models' kept rows included.
FAMILIES: dict[str, Callable[["Study", pd.DataFrame], pd.DataFrame]] = {}


def family(name: str):
    """Register ``f(study, df) -> df`` as the table ``name``'s family-wide columns (see ``FAMILIES``)."""
    def register(f):
        FAMILIES[name] = f
        return f
    return register


# a comparison's interval and detectable difference at its family's Holm level: not recomputable from a table's
# rows (they need each row's bootstrap). A narrowed study computes its own rows' at the level their family has
# with the committed rows it keeps (``kept_p_values``); the kept rows' are left empty, since their level may have
# changed (the report then prints their unadjusted interval, marked)
FAMILY_INTERVAL = ("ci low (family)", "ci high (family)", "detectable (80% power, family)")


def kept_p_values(study: "Study", name: str, claim: str, models) -> list[float]:
    """The p-values of the committed rows of ``claim`` in comparison table ``name`` that a write of a narrowed
    study keeps (``with_other_models``: the profile's other models, not among ``models``, the new rows' models):
    the rest of the claim's family when the new rows' intervals are set at their Holm level."""
    others = [m for m in study.other_models if m not in set(models)]
    old = read(study, name) if others else None
    if old is None:
        return []
    return old.loc[(old["claim"] == claim) & old["model"].isin(others), "p"].tolist()


def with_other_models(study: "Study", name: str, df: pd.DataFrame) -> pd.DataFrame:
    """A table of a study narrowed to some of its profile's models: the new rows, and the committed table's
    rows of the profile's other models (``Study.other_models``) that the new rows do not hold, in the profile's
    model order. A table built from an already merged one (Table 1 from the per-query table) holds every
    model and keeps nothing. A pooled row (of no profile model) is never kept: it needs every model's queries."""
    others = [m for m in study.other_models if m not in set(df["model"])] if "model" in df else []
    old = read(study, name) if others else None
    if old is None:
        return df
    kept = old[old["model"].isin(others)]
    if kept.empty:
        return df
    if base_table(name) == "comparisons":  # each row's family interval is at a level set by every p of its family
        kept = kept.assign(**{c: np.nan for c in FAMILY_INTERVAL})
    log.info("table %s: rows of %s recomputed, the committed rows of %s kept", name,
             ", ".join(dict.fromkeys(df["model"])), ", ".join(dict.fromkeys(kept["model"])))
    order = {m: i for i, m in enumerate(study.profile_models)}
    if "query_id" in df:
        df = df.assign(query_id=df["query_id"].astype(str))
    both = pd.concat([kept, df], ignore_index=True)
    rank = both["model"].map(order).fillna(len(order))  # a row of no profile model (pooled) last
    return both.iloc[np.argsort(rank.to_numpy(), kind="stable")].reset_index(drop=True)


def write(study: "Study", name: str, df: pd.DataFrame) -> pd.DataFrame:
    """Write a table (its columns in ``COLUMNS``' order) and return it as written: with the other models' kept
    rows of a narrowed study and the table's family-wide columns (``FAMILIES``) computed over all of them."""
    cols = columns(name)
    if df.empty and not len(df.columns):  # no row (e.g. no ablation model among a narrowed study's)
        df = pd.DataFrame(columns=cols)
    missing = [c for c in cols if c not in df.columns]
    if missing:
        raise UsageError(f"table {name} lacks columns {missing}")
    df = with_other_models(study, name, df[cols].reset_index(drop=True))
    if name in FAMILIES:
        df = FAMILIES[name](study, df)[cols]
    study.tables_dir.mkdir(parents=True, exist_ok=True)
    text = df.to_csv(index=False)
    atomic_write_text(study.tables_dir / f"{name}.csv", text)
    _record_in_manifest(study, name, text.encode(), len(df))
    return df


# Every table written is listed in the tables folder's manifest with its row count and sha256, so that a read
# finds a table cut short, edited or deleted (a comparison on a truncated per-query table would change verdicts)
MANIFEST = "manifest.json"


def _manifest(study: "Study") -> dict:
    path = study.tables_dir / MANIFEST
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as err:
        raise DamagedTable(f"{path} is unreadable ({err}): restore it (`git checkout -- {path}`) or regenerate the "
                           f"tables (`make reproduce PROFILE={study.p.name}`)") from None


def _record_in_manifest(study: "Study", name: str, data: bytes, rows: int) -> None:
    manifest = _manifest(study)
    manifest[name] = {"rows": rows, "sha256": hashlib.sha256(data).hexdigest()}
    atomic_write_text(study.tables_dir / MANIFEST, json.dumps(dict(sorted(manifest.items())), indent=1) + "\n")


def adopt_into_manifest(study: "Study") -> dict:
    """List every table of the study's tables folder in its manifest as it is now (tables written before the
    manifest existed): ``python -m corelib.study manifest --profile cpu``. Each is read first, so that only a table
    that parses with its columns is adopted."""
    for path in sorted(study.tables_dir.glob("*.csv")):
        name = path.stem
        if name not in COLUMNS and base_table(name) not in COLUMNS:
            continue
        data = path.read_bytes()
        try:
            rows = len(_parsed(path, name))
        except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError, KeyError) as err:
            raise DamagedTable(f"table {path} cannot be read as table {name} ({err}): restore it before adopting it") from None
        _record_in_manifest(study, name, data, rows)
    return _manifest(study)


class DamagedTable(UsageError):
    """A committed table is missing, cut short or changed outside the study (its manifest entry says so)."""


def _restore_hint(study: "Study", path) -> str:
    return (f"restore it (`git checkout -- {path}`) or regenerate it (`make reproduce PROFILE={study.p.name}`, or the "
            "notebook that writes it)")


def read(study: "Study", name: str) -> pd.DataFrame | None:
    """A table as written, or None where the study never wrote it; query ids are read as text, as the tables were
    built (so that a query of a read table and of a new one are the same query when pooled). A table the manifest
    lists that is missing, or whose bytes differ from those written (cut short, edited), is refused (DamagedTable)."""
    path = study.tables_dir / f"{name}.csv"
    entry = _manifest(study).get(name)
    if not path.is_file():
        if entry is not None:
            raise DamagedTable(f"table {path} is missing, though {MANIFEST} lists it ({entry['rows']} rows): "
                               + _restore_hint(study, path))
        return None
    data = path.read_bytes()
    if entry is not None and hashlib.sha256(data).hexdigest() != entry["sha256"]:
        raise DamagedTable(f"table {path} is not the one the study wrote ({entry['rows']} rows were written; its "
                           "bytes differ: cut short or edited?): " + _restore_hint(study, path))
    try:
        return _parsed(path, name)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError, KeyError) as err:
        raise DamagedTable(f"table {path} cannot be read as table {name} ({str(err).strip().splitlines()[0]}): "
                           + _restore_hint(study, path)) from None


def _parsed(source, name: str) -> pd.DataFrame:
    """A table's csv (a path or a text buffer) with its columns as ``columns(name)`` gives them; query ids as text."""
    df = pd.read_csv(source, dtype={"query_id": str})
    missing = [c for c in columns(name) if c not in df]
    if missing:
        raise KeyError(f"columns {missing} are missing")
    return df[columns(name)]


def read_at(study: "Study", name: str, revision: str) -> pd.DataFrame:
    """A table as a git revision of the study's tables folder holds it (an earlier run's committed rows), read
    like ``read``; an error names the table and the revision where the revision lacks it."""
    import io
    import subprocess

    if not study.tables_dir.is_dir():  # git runs in it
        raise MissingInput(f"no tables folder {study.tables_dir}: run `make reproduce PROFILE={study.p.name}` first")
    try:
        shown = subprocess.run(["git", "show", f"{revision}:./{name}.csv"], cwd=study.tables_dir, capture_output=True,
                               text=True)
    except OSError as e:  # no git
        raise MissingInput(f"reading {name}.csv at {revision} needs git: {e}") from None
    if shown.returncode:
        raise MissingInput(f"no {name}.csv at revision {revision!r} in {study.tables_dir} "
                                f"({shown.stderr.strip().splitlines()[-1] if shown.stderr.strip() else 'git failed'}): "
                                "name a commit whose tables hold the earlier run (`git log -- <tables folder>`)")
    return _parsed(io.StringIO(shown.stdout), name)


def whole_runs(provenance: pd.DataFrame) -> pd.DataFrame:
    """The rows of table ``provenance`` that name a run which computed every row of its model (empty ``methods``),
    not a later command that recomputed some methods alone."""
    return provenance[provenance["methods"].fillna("") == ""]


def later_commands(provenance: pd.DataFrame) -> pd.DataFrame:
    """The other rows of table ``provenance``: later commands that recomputed some methods (or a table) alone."""
    return provenance[provenance["methods"].fillna("") != ""]


def mean_over_collections(df: pd.DataFrame, value: str = "ndcg@10") -> float:
    return float(df.groupby("collection")[value].mean().mean())


def digest(key: dict) -> str:
    return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:12]
