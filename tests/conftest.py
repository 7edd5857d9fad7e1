import json
import os
import subprocess
import warnings
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
DATA = Path(os.environ.get("CORELIB_DATA", REPO.parent / "shared" / "data"))

warnings.filterwarnings("ignore", message=".*unsafe cast.*")


def committed_files(*pathspec: str) -> list[Path]:
    """The committed files matching a git pathspec (an ignored file in the tree, such as a smoke run, is not one);
    outside a git checkout the calling test is skipped, since which files are committed is git's to say."""
    try:
        out = subprocess.run(["git", "ls-files", *pathspec], cwd=REPO, capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        pytest.skip("not a git checkout: which files are committed is git's to say")
    return [REPO / name for name in out.splitlines()]


def pytest_configure(config):
    config.addinivalue_line("markers", "shared_data: needs the shared data directory")


@pytest.fixture(scope="session")
def shared_data() -> Path:
    if not (DATA / "scifact" / "queries.jsonl").is_file():
        pytest.skip(f"shared data not found at {DATA}; set CORELIB_DATA")
    return DATA


@pytest.fixture(scope="session")
def default_lm():
    from corelib.models import load_model

    return load_model("smollm2-135m")


@pytest.fixture(scope="session")
def tokenizer():
    """The default model's tokenizer (with its chat template), from a one-layer load: tiny-model tests need no
    135M backbone."""
    from corelib.models import load_model

    return load_model("smollm2-135m", num_layers=1).tokenizer


@pytest.fixture()
def tiny_beir(tmp_path) -> Path:
    """A three-document collection in BEIR layout, with no run file (BM25 fallback)."""
    base = tmp_path / "tiny"
    (base / "qrels").mkdir(parents=True)
    docs = [
        {"_id": "d1", "title": "Sky", "text": "The sky is blue because air scatters blue light more than red light."},
        {"_id": "d2", "title": "Cats", "text": "Cats are small domesticated carnivorous mammals that purr."},
        {"_id": "d3", "title": "Rust", "text": "Iron rusts when it reacts with oxygen and water over time."},
    ]
    (base / "corpus.jsonl").write_text("\n".join(json.dumps(d) for d in docs) + "\n")
    queries = [{"_id": "q1", "text": "why is the sky blue"}, {"_id": "q2", "text": "why do cats purr"}]
    (base / "queries.jsonl").write_text("\n".join(json.dumps(q) for q in queries) + "\n")
    (base / "qrels" / "test.tsv").write_text("query-id\tcorpus-id\tscore\nq1\td1\t1\nq2\td2\t1\n")
    return tmp_path
