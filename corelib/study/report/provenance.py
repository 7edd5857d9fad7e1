"""Which run computed each model's rows: the command, commit, date and machine (table ``provenance``), and the
report's lines that name them."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import pandas as pd

from ...errors import MissingInput
from ...models import dtype_name
from ..tables.schema import later_commands, whole_runs

if TYPE_CHECKING:
    from ..core import Study

def reproduce_command(profile_name: str, models=None) -> str:
    """The command of a run of a profile, narrowed to ``models`` where given, as table ``provenance`` names it."""
    models = " ".join(models or [])
    narrowed = (f' MODEL="{models}"' if " " in models else f" MODEL={models}") if models else ""
    return f"make reproduce PROFILE={profile_name}{narrowed}"


def record_provenance(study: "Study") -> pd.DataFrame:
    """Which run computed each model's rows (table ``provenance``): the command, the commit, the date and the
    machine, for the study's models; a narrowed study keeps the other models' rows (the notebooks' last step)."""
    command = reproduce_command(study.p.name, study.p.models if study.other_models else None)
    rows = [{"model": m, "command": command, **run_stamp(),
             "dtype": dtype_name(study.spec(m).dtype),  # as loaded: the profile's, or the device's default
             "methods": ""}
            for m in study.p.models]
    return study.tables.write("provenance", pd.DataFrame(rows))


def run_stamp() -> dict[str, str]:
    """The commit (marked where the code has uncommitted changes), the date and the machine of a run."""
    import datetime
    import os
    import subprocess

    from ..timing import machine_key

    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=True,
                                cwd=Path(__file__).parent).stdout.strip()
        # the code that computes (results being written are not a change of it)
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no", "--", ":/corelib", ":/notebooks",
                                ":/Makefile", ":/requirements*.txt", ":/pyproject.toml"], capture_output=True, text=True,
                               cwd=Path(__file__).parent).stdout.strip()
        commit += " (with uncommitted changes)" if dirty else ""
    except (OSError, subprocess.CalledProcessError):
        commit = "unknown (not a git checkout)"
    key = machine_key()
    return {"commit": commit, "date": datetime.date.today().isoformat(),
            "machine": f"{key['device']}, {os.cpu_count()} cores ({key['cpu']})"}


def later_provenance(study: "Study", command: str, what: str, models=None) -> pd.DataFrame:
    """Add to table ``provenance`` a later command that recomputed ``what`` alone (some methods' rows, "BM25,
    Bi-encoder", or a table, "table practitioner_cost") for ``models`` (default: every model the table names),
    replacing an earlier row of the same ``what``; the runs that computed the rest stay."""
    old = study.tables.read("provenance")
    if old is None:
        raise MissingInput(f"no provenance table in {study.tables_dir}: run `make reproduce PROFILE={study.p.name}` first")
    whole = whole_runs(old)
    models = list(whole["model"]) if models is None else list(models)
    rows = pd.DataFrame([{"model": m, "command": command, **run_stamp(), "dtype": "-", "methods": what} for m in models])
    kept = later_commands(old)
    kept = kept[kept["methods"] != what]
    return study.tables.write("provenance", pd.concat([whole, kept, rows], ignore_index=True))


def provenance_lines(df: pd.DataFrame | None) -> list[str]:
    """The report's provenance: one line per run that computed some models' rows."""
    if df is None or df.empty:
        return []
    lines = []
    df = df.assign(methods=df["methods"].fillna(""))
    for (command, commit, date, methods), g in df.groupby(["command", "commit", "date", "methods"], sort=False):
        if methods:  # a later command that recomputed some methods' rows alone
            what = f"{methods} ({', '.join(g['model'])})" if methods.startswith("table ") else \
                f"{methods} rows of {', '.join(g['model'])}"
            lines.append(f"- {what}: `{command}` at commit {commit}, {date} ({'; '.join(dict.fromkeys(g['machine']))})")
            continue
        machines = "; ".join(dict.fromkeys(g["machine"] + ", " + g["dtype"]))
        folder = executed_folder(command)
        # a whole-profile run's notebooks show every model it ran, also those a later narrowed run recomputed
        later = [m for m in dict.fromkeys(df.loc[df["methods"] == "", "model"]) if m not in set(g["model"])]
        shown = f" (they also show the earlier rows of {', '.join(later)})" if folder == "./" and later else ""
        rest = " (every row but those recomputed below)" if (df["methods"] != "").any() else ""
        lines.append(f"- {', '.join(g['model'])}{rest}: `{command}` at commit {commit}, {date} ({machines}); its "
                     f"executed notebooks are in `{folder}` (Table 1's: [`03_table1_rerank.ipynb`]({folder}03_table1_rerank.ipynb))"
                     f"{shown}")
    return ["Which run computed each model's rows:", "", *lines, ""]


def executed_folder(command: str) -> str:
    """Where a ``make reproduce`` command wrote its executed notebooks, relative to the profile's REPORT.md (the
    Makefile's EXECUTED): the profile's folder, or ``models/<a+b>/`` for a run narrowed with MODEL=."""
    import shlex

    models = [w.split("=", 1)[1] for w in shlex.split(command) if w.startswith("MODEL=")]
    return f"models/{'+'.join(models[0].split())}/" if models else "./"


