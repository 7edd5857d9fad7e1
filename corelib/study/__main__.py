"""``python -m corelib.study warm``: compute and cache a profile's records (resumable, one model at a time);
``python -m corelib.study pending``: what is left to compute (from file names; loads no model).

With accelerate, ``accelerate launch -m corelib.study warm ...`` shards the records over processes
(or GPUs): each process computes its share, all write to the one record store.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from ..errors import MissingInput


def list_notebooks(args) -> int:
    """The ``notebooks`` subcommand: the profile's notebooks to run (skipped ones, with why, on stderr)."""
    from .profiles import profile

    skipped = profile(args.profile).skipped_notebooks()
    if args.start and not any(Path(path).name >= args.start for path in args.paths):
        print(f"error: no notebook's name sorts at or after --from {args.start!r}; the notebooks are "
              f"{', '.join(Path(p).name for p in args.paths)} (give a prefix such as 05)", file=sys.stderr)
        return 2
    if args.only and not any(Path(path).name.startswith(args.only) for path in args.paths):
        print(f"error: no notebook's name starts with --only {args.only!r}; the notebooks are "
              f"{', '.join(Path(p).name for p in args.paths)}", file=sys.stderr)
        return 2
    for path in args.paths:
        if Path(path).name < args.start or not Path(path).name.startswith(args.only):
            continue
        why = skipped.get(Path(path).stem)
        if why:
            print(f"== skip {path}: {why}", file=sys.stderr)
        else:
            print(path)
    return 0


def clean_outputs(path) -> int:
    """Tidy an executed notebook: remove progress bars (stderr text redrawn with carriage returns, or tqdm's widgets);
    number the executed code cells that carry no count (cells appended by ``add-findings``, run by papermill); and
    write an absolute data path in the injected parameters as a path relative to the notebooks folder, so that the
    notebook names no machine's folders. Returns how many outputs were dropped."""
    import os

    import nbformat

    def progress(o) -> bool:
        if o.get("output_type") == "stream":
            return o.get("name") == "stderr" and "\r" in "".join(o.get("text", ""))
        return "application/vnd.jupyter.widget-view+json" in o.get("data", {})

    from .findings_cells import NOTEBOOKS, read_notebook

    nb = read_notebook(path)
    before = nbformat.writes(nb)
    params = nb.metadata.get("papermill", {}).get("parameters", {})
    if isinstance(params.get("DATA"), str) and params["DATA"].startswith("/"):
        params["DATA"] = os.path.relpath(params["DATA"], NOTEBOOKS)
    nb.metadata.pop("widgets", None)
    dropped, count = 0, 0
    for cell in nb.cells:
        keep = [o for o in cell.get("outputs", []) if not progress(o)]
        dropped += len(cell.get("outputs", [])) - len(keep)
        if "outputs" in cell:
            cell["outputs"] = keep
        if cell.cell_type == "code":
            if cell.get("execution_count") is not None:
                count = cell.execution_count
            elif cell.get("outputs") or cell.get("metadata", {}).get("papermill", {}).get("status") == "completed":
                count += 1
                cell.execution_count = count
        if "injected-parameters" in cell.get("metadata", {}).get("tags", []):
            lines = []
            for line in cell.source.splitlines():
                name, eq, value = line.partition(" = ")
                if name == "DATA" and value.startswith('"/'):
                    line = f'DATA = "{os.path.relpath(value.strip(chr(34)), NOTEBOOKS)}"'
                lines.append(line)
            cell.source = "\n".join(lines) + ("\n" if cell.source.endswith("\n") else "")
    if nbformat.writes(nb) != before:
        nbformat.write(nb, path)
    return dropped


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m corelib.study", description=__doc__)
    parser.add_argument("-v", "--verbose", action="store_true")
    sub = parser.add_subparsers(dest="command", required=True)
    # what every study command takes: the profile, and for those that read data, the data and the models
    prof = argparse.ArgumentParser(add_help=False)
    prof.add_argument("--profile", default="quick", help="quick (default), smoke, cpu, cpu-dense or paper")
    data = argparse.ArgumentParser(add_help=False)
    data.add_argument("--data", default=None, help="data directory in BEIR layout (default: $CORELIB_DATA)")
    models = argparse.ArgumentParser(add_help=False)
    models.add_argument("--model", action="append", help="only this model of the profile (repeatable)")
    models.add_argument("--no-multilingual", action="store_true")
    out = argparse.ArgumentParser(add_help=False)
    out.add_argument("--out", default="results", help="the results directory holding <profile>/tables (default: results)")

    p = sub.add_parser("warm", parents=[prof, data, models],
                       help="compute and cache all records a profile's notebooks need (resumable)")
    p.add_argument("--step", action="append", help="only this step (repeatable; `pending` lists the steps), "
                   "e.g. 'scifact (shuffled)'")
    q = sub.add_parser("pending", parents=[prof, data, models],
                       help="what `warm` has left: records needed, cached and missing per model and step")
    q.add_argument("--brief", action="store_true", help="only the summary line (`make reproduce` prints it first)")
    n = sub.add_parser("notebooks", parents=[prof],
                       help="the numbered notebooks that apply to a profile (skipped ones, with why, on stderr)")
    n.add_argument("--from", dest="start", default="", help="only notebooks whose file name sorts at or after this "
                   "prefix (e.g. 05): resumes a stopped `make reproduce` (FROM=05) without re-running the earlier ones")
    n.add_argument("--only", default="", help="only the notebooks whose file name starts with this prefix (e.g. 06): "
                   "one notebook's tables and figures again (ONLY=06)")
    n.add_argument("paths", nargs="+")
    t = sub.add_parser("time-pruning", parents=[prof, data, models], help="measure and cache the pruning cost of a "
                       "profile's models (on an idle machine, in each model's dtype) and write their rows of the "
                       "pruning_cost table, which `make reproduce` then reuses")
    t.add_argument("--repeats", type=int, default=3, help="timed runs after a warm-up (notebook 07's TIMING_REPEATS)")
    sub.add_parser("practitioner-cost", parents=[prof, data, out], help="time a practitioner's per-query latency of "
                   "the bi-encoder and the profile's first model (notebook 03's practitioner_cost; on an idle machine)")
    sub.add_parser("robustness", parents=[prof, out], help="per-collection differences (forest plot), "
                   "leave-one-collection-out estimates and agreement with BM25, from a profile's per-query table (no forward)")
    oc = sub.add_parser("order-check", parents=[prof, data, models, out], help="the candidate-order check: the claims with "
                        "shuffled candidates beside ICR's order on the same queries (computes the shuffled records it lacks)")
    oc.add_argument("--fill-tau", action="store_true", help="only fill the committed rows' missing Kendall tau in ICR's "
                    "order, from the ICR-order records of the order sample (computed where missing; shuffled rows kept)")
    sub.add_parser("manifest", parents=[prof, out], help="list the profile's committed tables in their folder's "
                   "manifest (row count and sha256) as they are now, so that a read refuses one cut short or edited")
    sub.add_parser("ship-heads", parents=[prof, out], help="copy the profile's head rankings of the built-in models, "
                   "each head's score beside it (from table head_scores), into the package (corelib/head_rankings), "
                   "so that `core:8` works from any directory")
    sub.add_parser("order-remedies", parents=[prof, data, models, out], help="the order remedies (notebook 11): every "
                   "attention re-ranker under each remedy, in ICR's order and shuffled, its tables and figure (computes "
                   "the records it lacks)")
    sub.add_parser("record-costs", parents=[prof, data, models, out], help="write the median compute time of each "
                   "model's cached records per kind into results/record_costs.csv, which `pending` reads for a cold cache")
    pc = sub.add_parser("precision-check", parents=[prof, data, out], help="the analysis plan's precision check: one "
                        "model's records in another dtype against its committed fp32 rows (computes the records it lacks)")
    pc.add_argument("--model", required=True, help="the model to check (one of the profile's)")
    pc.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float16"])
    mc = sub.add_parser("machine-check", parents=[prof, out], help="the precision check's rule for a rerun on another "
                        "machine: one model's rows in the tables against those an earlier commit holds (no forward)")
    mc.add_argument("--model", required=True, help="the model to check (one of the profile's)")
    mc.add_argument("--against", required=True, help="the git revision whose tables hold the earlier run's rows")
    sub.add_parser("comparisons", parents=[prof, out], help="recompute the paired comparisons of Tables 1-2, the "
                   "candidate-order check, the peak test and the pruning margin from a profile's per-query tables, then its verdicts and REPORT.md (no forward)")
    sub.add_parser("record-free", parents=[prof, data, out], help="recompute the rows of the methods that read no "
                   "attention record (first stages, bi-encoder) for every model of the per-query tables, then Tables 1-2, "
                   "the comparisons, the robustness tables, the figures and REPORT.md (no LLM forward)")
    sub.add_parser("released", parents=[prof, data, out], help="the paper's models from their authors' released head "
                   "scores: depth, pruning survival, heat maps (no forward)")
    sub.add_parser("figures", parents=[prof, out], help="redraw the figures that need no record from a profile's "
                   "committed tables (Tables 1-2, Figures 1 and 3, scaling, forest)")
    sub.add_parser("headline", parents=[prof, out], help="the README's headline table (mean nDCG@10 per model and "
                   "method) from a profile's committed table1_average")
    sub.add_parser("banner", parents=[prof, models], help="what a profile runs and how long it takes (`make reproduce` prints it first)")
    f = sub.add_parser("add-findings", help="append its closing findings cells, generated from the committed tables, "
                       "to an executed notebook that ran before its notebook ended with them (no forward; refuses where "
                       "the tables no longer hold that run's rows)")
    f.add_argument("notebooks", nargs="+", help="executed notebooks, e.g. results/cpu-dense/01_data_and_models.ipynb")
    c = sub.add_parser("clean-outputs", help="drop progress bars from executed notebooks (they show live, not stored)")
    c.add_argument("notebooks", nargs="+")
    args = parser.parse_args(argv)
    from ..errors import run_command

    if args.command == "notebooks":
        return run_command(lambda: list_notebooks(args))
    if args.command == "banner":
        from ..errors import run_command
        from .profiles import narrowed, profile

        def banner():
            x = profile(args.profile)
            x = narrowed(x, args.model) if args.model else x
            print(f"profile {x.name}: {', '.join(x.models)}; {x.summary()}")
            print(f"expected duration on a 2-core CPU: {x.hours}; records are cached, so a stopped run resumes")

        return run_command(banner)
    if args.command == "clean-outputs":
        return run_command(lambda: [clean_outputs(path) for path in args.notebooks])
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    from ..errors import run_command
    from .core import Study
    from .sharding import shard

    def warm():
        S = Study(args.profile, data=args.data, models=args.model)
        with shard(S) as part:
            S.warm(multilingual=not args.no_multilingual, steps=args.step)
        print(f"records of profile {S.p.name} cached for {', '.join(S.p.models)}" + (f" ({part})" if part else ""))

    def pending():
        from .warm import COSTS_FILE, left_summary

        S = Study(args.profile, data=args.data, models=args.model)
        table = S.pending(multilingual=not args.no_multilingual)
        if not args.brief:
            print(table.to_string(index=False, na_rep="-", float_format=lambda v: f"{v:.2f}"))
        unencoded = [c for c in (*S.p.collections, *S.p.multilingual) if not S.candidates_cached(c)]
        if unencoded:
            print(f"profile {S.p.name}: the dense first stage has not encoded the corpora of {', '.join(unencoded)} "
                  f"yet, so their records are counted as missing; `make warm PROFILE={S.p.name}` encodes them first "
                  "(minutes per corpus on a CPU, not in the estimate)")
        if not table["missing"].sum():
            print(f"profile {S.p.name}: every record and needle trial is cached")
            return
        print(f"profile {S.p.name}, records and needle trials not cached yet (and the time they take at the pace of the "
              f"model's cached records, else of {S.out / COSTS_FILE}): {left_summary(table)}. What is missing "
              f"is computed on first use; `make warm PROFILE={S.p.name}` computes it first, resumably, one model at "
              f"a time (`make pending PROFILE={S.p.name}` lists it by step)")

    def time_pruning():
        S = Study(args.profile, data=args.data, models=args.model)
        for m in S.p.models:
            df = S.tables.model_pruning_cost(m, repeats=args.repeats)
            print(df.to_string(index=False, float_format=lambda v: f"{v:.3f}"), flush=True)
        # the table notebook 07 reads: these models' rows (cached above) replace theirs, the others' are kept
        print(f"{S.tables_dir / 'pruning_cost'}.csv: {len(S.tables.pruning_cost(repeats=args.repeats))} rows")

    def practitioner_cost():
        S = Study(args.profile, data=args.data, out=args.out)
        pq = S.tables.read("per_query")
        if pq is None:
            raise MissingInput(f"no per-query table in {S.tables_dir}: run notebook 03 of profile {S.p.name} first")
        print(S.tables.practitioner_cost(pq).to_string(index=False, float_format=lambda v: f"{v:.3f}"))
        from . import report

        report.later_provenance(S, f"python -m corelib.study practitioner-cost --profile {S.p.name}",
                                "table practitioner_cost", models=S.p.models[:1])

    def robustness():
        from .robustness import write_all

        S = Study(args.profile, out=args.out)
        for name, df in write_all(S).items():
            print(f"{S.tables_dir / name}.csv: {len(df)} rows")

    def released():
        from .released import write_all as write_released

        S = Study(args.profile, data=args.data, out=args.out)
        for name, df in write_released(S).items():
            print(f"{S.tables_dir / name}.csv: {len(df)} rows")

    def record_costs():
        from .warm import write_record_costs

        S = Study(args.profile, data=args.data, out=args.out, models=args.model)
        path, table = write_record_costs(S)
        print(table.to_string(index=False, float_format=lambda v: f"{v:.2f}"))
        print(path)

    def comparisons():
        from . import report
        from .order_check import order_claims
        from .tables.sweep import peak_comparisons

        S = Study(args.profile, out=args.out)
        written = {}
        for name, per_query, build in (
                ("comparisons_table1", "per_query", lambda s, df: s.tables.table1_comparisons(df)),
                ("comparisons_table2", "per_query_multilingual", lambda s, df: s.tables.table2_comparisons(df)),
                ("comparisons_order", "order_per_query", order_claims),
                ("comparisons_peak", "per_query_peak", lambda s, df: s.tables.comparisons("peak", [peak_comparisons(s, df)])),
                ("comparisons_pruning", "per_query_pruning",
                 lambda s, df: s.tables.comparisons("pruning", [s.tables.pruning_margin(df)]))):
            df = S.tables.read(per_query)
            if df is None:
                continue
            # a per-query table that holds some of the models (written by a narrowed run): rebuilt as that run
            # would, keeping the other models' committed comparison rows
            held = [m for m in S.p.models if m in set(df["model"])]
            by = S if set(held) == set(S.p.models) or not held else Study(args.profile, out=args.out, models=held)
            written[name] = build(by, df)
        if not written:
            raise MissingInput(f"no per-query table in {S.tables_dir}: run `make reproduce PROFILE={S.p.name}` first")
        if (positions := S.tables.read("control_positions")) is not None:  # its families' Holm and verdicts again
            written["control_positions"] = S.tables.write("control_positions", positions)
        written["verdicts"] = report.verdicts(S)
        report.write_report(S, S.out / S.p.name / "REPORT.md")
        for name, df in written.items():
            print(f"{S.tables_dir / name}.csv: {len(df)} rows")
        print(S.out / S.p.name / "REPORT.md")

    def headline():
        from .report import headline as table

        print(table(Study(args.profile, out=args.out)))

    def record_free():
        from . import plots, report
        from .robustness import write_all as write_robustness
        from .tables.table1 import record_free_methods

        S = Study(args.profile, data=args.data, out=args.out)
        per_query = S.tables.refresh_record_free()
        if not per_query:
            raise MissingInput(f"no per-query table in {S.tables_dir}: run `make reproduce PROFILE={S.p.name}` first")
        for name, table in (("per_query", "table1"), ("per_query_multilingual", "table2")):
            if name in per_query:
                S.tables.table1(per_query[name], name=table)
        report.later_provenance(S, f"python -m corelib.study record-free --profile {S.p.name}",
                                ", ".join(sorted(record_free_methods(S))))
        write_robustness(S)
        comparisons()  # the paired tests, the verdicts and REPORT.md
        for path in plots.redraw(S):
            print(path)

    def figures():
        from . import plots

        S = Study(args.profile, out=args.out)
        written = plots.redraw(S)
        if not written:
            raise MissingInput(f"no table in {S.tables_dir} to draw a figure from: run `make reproduce PROFILE={S.p.name}` "
                               "first")
        for path in written:
            print(path)

    def show_model_rows(S, tables: dict):
        for name, df in tables.items():
            print(df[df["model"] == args.model].to_string(index=False, float_format=lambda v: f"{v:.4f}"))
            print(f"{S.tables_dir / name}.csv: {len(df)} rows")

    def precision():
        from .precision import precision_check

        S = Study(args.profile, data=args.data, out=args.out)
        show_model_rows(S, precision_check(S, args.model, args.dtype))

    def machine():
        from .precision import machine_check

        S = Study(args.profile, out=args.out)
        show_model_rows(S, machine_check(S, args.model, args.against))

    def order_check():
        from .order_check import fill_icr_order_tau, write_all

        S = Study(args.profile, data=args.data, out=args.out, models=args.model)
        for name, df in (fill_icr_order_tau if args.fill_tau else write_all)(S).items():
            print(f"{S.tables_dir / name}.csv: {len(df)} rows")

    def manifest():
        from .tables.schema import MANIFEST, adopt_into_manifest

        S = Study(args.profile, out=args.out)
        print(f"{S.tables_dir / MANIFEST}: {len(adopt_into_manifest(S))} tables")

    def ship_heads():
        from .tables.heads import ship_head_rankings

        S = Study(args.profile, out=args.out)
        for path in ship_head_rankings(S):
            print(path)

    def order_remedies():
        from . import plots
        from .order_remedies import write_all

        S = Study(args.profile, data=args.data, out=args.out, models=args.model)
        tables = write_all(S)
        for name, df in tables.items():
            print(f"{S.tables_dir / name}.csv: {len(df)} rows")
        plots.save(plots.order_remedies(tables["order_remedy_means"], f"Order remedies ({S.p.name})"),
                   S.figures_dir / "order_remedies")

    def add_findings():
        from .findings_cells import add_findings as add

        for path in args.notebooks:
            print(f"{path}: {'findings added' if add(path) else 'already ends with its findings'}")

    return run_command({"warm": warm, "add-findings": add_findings, "pending": pending, "time-pruning": time_pruning, "robustness": robustness,
                        "released": released, "order-check": order_check, "order-remedies": order_remedies, "manifest": manifest, "ship-heads": ship_heads, "figures": figures, "headline": headline,
                        "comparisons": comparisons, "record-costs": record_costs, "record-free": record_free, "practitioner-cost": practitioner_cost,
                        "precision-check": precision, "machine-check": machine}[args.command])


if __name__ == "__main__":
    sys.exit(main())
