"""Closing findings cells for an executed notebook that ran before its notebook ended with them.

Every numbered notebook ends with a generated "what this notebook found" cell (a heading and a call of
``report.findings`` or ``report.answer``). A notebook executed before that cell existed can get it later
without running its forwards again, where the tables still hold the rows its run wrote: the closing cells
run in a kernel on the committed tables and are appended below the run's cells, after a note that says
when, at which commit and by which command they were added.
"""

from __future__ import annotations

import logging
import tempfile
from pathlib import Path

import nbformat

from ..errors import MissingInput, UsageError
from .profiles import profile
from .tables.schema import later_commands, whole_runs

log = logging.getLogger(__name__)

NOTEBOOKS = Path(__file__).resolve().parents[2] / "notebooks"
HEADING_MARK = "no number here is typed by hand"  # the closing heading's wording (tests/test_findings.py)


def read_notebook(path):
    """An executed notebook, or a UsageError naming the file and what is wrong with it."""
    import json

    if not Path(path).is_file():
        raise MissingInput(f"{path} is not a file: give the path of an executed notebook (.ipynb)")
    try:
        return nbformat.read(path, as_version=4)
    except (json.JSONDecodeError, UnicodeDecodeError, nbformat.reader.NotJSONError, nbformat.ValidationError,
            KeyError, AttributeError) as err:
        raise UsageError(f"{path} is not a Jupyter notebook ({type(err).__name__}: {str(err).splitlines()[0][:120]}): "
                         "give an executed .ipynb file") from None


def closing_cells(source: nbformat.NotebookNode) -> list:
    """A numbered notebook's closing cells: the heading and the generated findings call that end it."""
    heading, call = source.cells[-2:]
    if heading.cell_type != "markdown" or HEADING_MARK not in heading.source or call.cell_type != "code":
        raise UsageError("the notebook does not end with its generated findings (a heading saying "
                         f"'{HEADING_MARK}', then the call)")
    return [heading, call]


def has_findings(executed: nbformat.NotebookNode, source: nbformat.NotebookNode) -> bool:
    """Whether the executed notebook's last code cell makes the source's closing call (its imports may differ)."""
    code = [c for c in executed.cells if c.cell_type == "code"]
    call = closing_cells(source)[1].source.strip().splitlines()[-1]
    return bool(code) and code[-1].source.strip().splitlines()[-1:] == [call]


def run_of(executed: nbformat.NotebookNode, path: Path) -> tuple[dict, str]:
    """The papermill parameters and the start date of an executed notebook's run."""
    pm = executed.metadata.get("papermill", {})
    if "parameters" not in pm or not pm.get("start_time"):
        raise UsageError(f"{path} has no papermill metadata: only a notebook executed by `make reproduce` "
                         "(papermill) can get its findings added")
    return dict(pm["parameters"]), str(pm["start_time"])[:10]


def add_findings(path, notebooks: Path = NOTEBOOKS) -> bool:
    """Append its notebook's closing findings cells, run on the committed tables, to the executed notebook at
    ``path``; False where it already ends with them. Refuses (ValueError naming the rerun) where the tables no
    longer hold the rows of the run that executed it, since the findings would then not describe its cells."""
    from .core import Study
    from .report import reproduce_command, run_stamp

    path = Path(path)
    executed = read_notebook(path)
    source_path = notebooks / path.name
    if not source_path.is_file():
        raise MissingInput(f"{path.name} is not one of the numbered notebooks in {notebooks}")
    source = nbformat.read(source_path, as_version=4)
    if has_findings(executed, source):
        return False
    params, started = run_of(executed, path)
    name = params["PROFILE"]
    models = list(params.get("MODELS") or profile(name).models)
    command = reproduce_command(name, params.get("MODELS"))
    fix = f"rerun it: {command} ONLY={path.name[:2]}"
    study = Study(name, out=notebooks / params.get("OUT", "../results"))
    provenance = study.tables.read("provenance")
    if provenance is None:
        raise MissingInput(f"no provenance table in {study.tables_dir}: {fix}")
    runs = whole_runs(provenance).set_index("model")
    for m in models:
        if m not in runs.index or (runs.at[m, "command"], runs.at[m, "date"]) != (command, started):
            held = (f"`{runs.at[m, 'command']}` at {runs.at[m, 'commit']}, {runs.at[m, 'date']}" if m in runs.index
                    else "no run")
            raise UsageError(f"{path} is the run `{command}` of {started}, but the tables hold {m}'s rows from {held}, "
                             f"so findings generated now would not describe its cells; {fix}")
    cells = _executed_closing_cells(source, params, notebooks)
    stamp, run = run_stamp(), runs.loc[models[0]]
    later = later_commands(provenance)
    later = later[later["model"].isin(models)]
    later_text = "".join(f"; their {r['methods']} rows were recomputed later by `{r['command']}` at {r['commit']}, "
                         f"{r['date']}" for _, r in later.drop_duplicates(["command", "methods"]).iterrows())
    try:  # as run from the repository's root, never a machine's absolute path
        shown = path.resolve().relative_to(notebooks.resolve().parent).as_posix()
    except ValueError:
        shown = path.name
    note = nbformat.v4.new_markdown_cell(
        f"*The closing cells below were added on {stamp['date']} at commit {stamp['commit']} by `python -m corelib.study "
        f"add-findings {shown}`, without running the cells above again. They are generated from the tables "
        f"as committed then, which still hold {', '.join(models)}'s rows from the run above (`{command}` at commit "
        f"{run['commit']}, {run['date']}, {run['machine']}, {run['dtype']}){later_text}.*")
    executed.cells.extend([note, *cells])
    nbformat.write(executed, path)
    log.info("%s: findings added", path)
    return True


def _executed_closing_cells(source: nbformat.NotebookNode, params: dict, notebooks: Path) -> list:
    """The closing cells, executed by papermill after the notebook's parameters and set-up cells (which build
    ``S``, the Study, and read no record), with the executed notebook's parameters."""
    import papermill

    code = [c for c in source.cells if c.cell_type == "code"]
    parameters, setup = code[0], code[1]
    if "parameters" not in parameters.metadata.get("tags", []) or "Study(" not in setup.source:
        raise UsageError("the notebook does not start with its parameters cell and its set-up cell (S = Study(...))")
    mini = nbformat.v4.new_notebook(metadata=source.metadata, cells=[parameters, setup, *closing_cells(source)])
    with tempfile.TemporaryDirectory() as tmp:
        src, out = Path(tmp) / "in.ipynb", Path(tmp) / "out.ipynb"
        nbformat.write(mini, src)
        known = papermill.inspect_notebook(str(src))  # a run's other parameters (MEASURE_COST) are other notebooks'
        params = {k: v for k, v in params.items() if k in known}
        try:
            papermill.execute_notebook(str(src), str(out), parameters=params, kernel_name="python3",
                                       cwd=str(notebooks), progress_bar=False, log_output=False)
        except papermill.PapermillExecutionError as e:
            raise RuntimeError(f"the closing cells failed on the committed tables ({e.ename}: {e.evalue}); the "
                               "notebook's closing cells must run after its set-up cell alone") from None
        ran = nbformat.read(out, as_version=4)
    closing = ran.cells[-2:]
    for cell, original in zip(closing, closing_cells(source)):
        cell.metadata = original.metadata  # without papermill's; no count, which would interleave with the run's
        if cell.cell_type == "code":
            cell.execution_count = None
            for output in cell.outputs:
                if "execution_count" in output:
                    output.execution_count = None
    return closing
