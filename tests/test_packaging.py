"""The package outside the repository: a built wheel holds every module (the study's tables among them) and its
type marker, and its CLI and a Study run from a folder that is not the repository."""

import os
import subprocess
import sys
import zipfile

import pytest

from conftest import REPO


@pytest.fixture(scope="module")
def wheel(tmp_path_factory):
    out = tmp_path_factory.mktemp("wheel")
    build = subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "-w", str(out),
                            str(REPO)], capture_output=True, text=True)
    if build.returncode:
        pytest.skip(f"the wheel could not be built here (offline, setuptools needed): {build.stderr.strip()[-300:]}")
    return next(out.glob("corelib-*.whl"))


def test_the_wheel_holds_every_module_and_the_type_marker(wheel):
    names = set(zipfile.ZipFile(wheel).namelist())
    modules = {str(p.relative_to(REPO)) for p in (REPO / "corelib").rglob("*.py")}
    assert modules <= names, sorted(modules - names)
    assert "corelib/py.typed" in names
    assert "corelib/head_rankings/smollm2-135m.core.json" in names  # the built-in models' heads travel with it


def test_the_installed_wheel_runs_outside_the_repository(wheel, tmp_path):
    site = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-index", "--target", str(site),
                    str(wheel)], check=True, capture_output=True)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    env = {**os.environ, "PYTHONPATH": str(site)}
    code = ("import corelib, corelib.study\n"
            "from corelib.study import Study\n"
            "S = Study('smoke', out='results')\n"
            "print(corelib.__file__)\n"
            "print(type(S.tables).__name__, S.tables.columns('per_query'))\n"
            "from corelib.heads import resolve_heads\n"
            "from corelib.models import model_spec\n"
            "spec = model_spec('smollm2-135m')\n"
            "print(resolve_heads('core:8', spec.model_id, None, spec.fingerprint).heads)\n")
    got = subprocess.run([sys.executable, "-c", code], cwd=elsewhere, env=env, capture_output=True, text=True)
    assert got.returncode == 0, got.stderr
    assert got.stdout.splitlines()[0].startswith(str(site))  # the installed copy, not the repository's
    assert "Tables" in got.stdout and "ndcg@10" in got.stdout
    from corelib.heads import HeadSet

    committed = HeadSet.load(REPO / "results" / "heads" / "smollm2-135m.core.json").top(8).heads
    assert got.stdout.splitlines()[-1] == str(committed)  # core:8 from a folder that is not the repository
    for argv in (["-m", "corelib", "--help"], ["-m", "corelib.study", "banner", "--profile", "smoke"]):
        got = subprocess.run([sys.executable, *argv], cwd=elsewhere, env=env, capture_output=True, text=True)
        assert got.returncode == 0, got.stderr
