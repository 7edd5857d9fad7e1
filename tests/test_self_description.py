"""The project speaks of itself: its tracked text (README, code, notebooks, reports, results) says what it is
and how each number was produced (a command, a commit or date, a machine description), never the history
of how it was written (work sessions, issue numbers, machines lent for a while)."""

import re

import pytest

from conftest import REPO, committed_files

HISTORY = re.compile(
    r"\bsessions? \d+|\bsessions \d+ ?-|\b(this|last|next|that|the previous|an earlier|a later) session\b"
    r"|\b(was|is|were) lent\b|\blent (once|to|for)\b|\bissues? #?\d+\b|\btravels? to (that|the GPU) machine\b"
    r"|\brecord job (was )?paused\b|#\s*before:",
    re.IGNORECASE,
)
TEXT = (".md", ".py", ".ipynb", ".txt", ".toml", ".yml", ".yaml", ".json", ".csv", ".cfg", "Makefile", ".sh", "run")


def tracked_text_files():
    return [path for path in committed_files() if path.name.endswith(TEXT) and path.is_file()]


def test_no_tracked_text_speaks_of_how_the_project_was_written():
    hits = []
    for path in tracked_text_files():
        if path.name == "test_self_description.py":
            continue
        for n, line in enumerate(path.read_text(encoding="utf-8", errors="replace").splitlines(), 1):
            if HISTORY.search(line):
                hits.append(f"{path.relative_to(REPO)}:{n}: {HISTORY.search(line).group(0)!r}")
    assert not hits, "history words in tracked text:\n" + "\n".join(hits[:30])


S, L, I = "sess" + "ion", "le" + "nt", "iss" + "ue"  # spelt apart, so that this file holds no example itself


@pytest.mark.parametrize("line, bad", [(f"last passed in {S} 12", True), (f"{S}s 9-12", True),
                                       (f"a GPU was {L} once", True), (f"({I} 11)", True),
                                       ("x = 1  # be" + "fore: it was 0", True),
                                       ('@pytest.fixture(scope="session")', False), ("2 CPU cores, fp32", False)])
def test_the_pattern_tells_history_from_plain_words(line, bad):
    assert bool(HISTORY.search(line)) is bad


def test_the_readme_headline_is_the_committed_cpu_table():
    """The README's headline table is generated (``python -m corelib.study headline --profile cpu``) from the
    committed tables, so no number in it is typed by hand."""
    from corelib.study import Study
    from corelib.study.report import headline

    table = headline(Study("cpu", out=REPO / "results"))
    assert table.count("\n") >= 5  # a header, its rule and the four models
    assert table in (REPO / "README.md").read_text(), "README's headline table: paste the output of `python -m corelib.study headline --profile cpu`"


@pytest.mark.parametrize("profile", ["quick", "cpu", "cpu-dense"])
def test_each_committed_report_is_what_its_committed_tables_generate(profile):
    """A committed REPORT.md is the report its committed tables give with the code as it is, so no report drifts
    from its tables or from a change of the report's wording or analysis plan."""
    from corelib.study import Study
    from corelib.study.report import APPENDIX_FILE, appendix_text, report_text

    study = Study(profile, out=REPO / "results")
    for path, text in ((REPO / "results" / profile / "REPORT.md", report_text),
                       (REPO / "results" / profile / APPENDIX_FILE, appendix_text)):
        assert text(study, path) == path.read_text(), (
            f"{path.relative_to(REPO)} differs from its tables: `python -m corelib.study comparisons --profile {profile}`")


@pytest.mark.parametrize("readme, reports", [("README.md", ["cpu", "cpu-dense", "quick"]),
                                             ("results/cpu-dense/README.md", ["cpu-dense"]),
                                             ("results/quick/README.md", ["quick"])])
def test_every_interval_and_ndcg_a_readme_quotes_is_in_a_committed_report(readme, reports):
    """A difference with its interval ("+3.50 [+2.41, +4.66]") or an nDCG@10 ("0.4620") typed into a README is
    one a generated REPORT.md states, so a README cannot drift from the tables (the reports are held to their
    tables above)."""
    text = (REPO / readme).read_text()
    stated = "".join((REPO / "results" / p / name).read_text() for p in reports for name in ("REPORT.md", "REPORT_APPENDIX.md"))
    for pattern in (r"[+-]\d+\.\d\d \[[+-]\d+\.\d\d, [+-]\d+\.\d\d\]", r"(?<![\d.])0\.\d{4}(?!\d)"):
        quoted = re.findall(pattern, text)
        assert len(quoted) >= 8
        assert not [q for q in quoted if q not in stated], f"{readme} quotes numbers no report of {reports} states"


def test_every_relative_link_in_the_committed_markdown_resolves():
    """A reader who follows a link from README, a report or the docs finds the file it names, in JupyterLab's
    Markdown preview as on a forge: a file, never a folder (Lab opens no folder from a link), and an in-page anchor
    only where the page holds an explicit ``<a id>`` of that name (Lab names headings by their own text, the forge by
    a slug; an explicit anchor serves both)."""
    markdown = committed_files("*.md")
    broken, folders, anchors = [], [], []
    for path in markdown:
        text = path.read_text()
        ids = set(re.findall(r'<a id="([^"]+)"></a>', text))
        for target, fragment in re.findall(r"\]\(([^)#\s]*)(?:#([^)\s]*))?\)", text):
            if "://" in target or target.startswith("mailto:"):
                continue
            if target and not (path.parent / target).exists():
                broken.append(f"{path.relative_to(REPO)}: {target}")
            elif target and (path.parent / target).is_dir():
                folders.append(f"{path.relative_to(REPO)}: {target}")
            elif fragment and fragment not in (set(re.findall(r'<a id="([^"]+)"></a>', (path.parent / target).read_text()))
                                               if target else ids):
                anchors.append(f"{path.relative_to(REPO)}: {target}#{fragment}")
    assert len(markdown) >= 8
    assert not broken, broken
    assert not folders, f"links to folders (give a file in them): {folders}"
    assert not anchors, f"links to an anchor the page does not hold as an explicit anchor: {anchors}"
