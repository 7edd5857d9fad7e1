"""The import graph of corelib: no cycle (imports inside functions count; ``if TYPE_CHECKING:`` ones do not),
the library never imports the study, and within the study no module imports a layer above its own."""

import ast
from pathlib import Path

from conftest import REPO

ROOT = REPO / "corelib"
# the study's layers, lowest first; a module may import its own layer and the ones below
STUDY_LAYERS = [
    {"methods", "profiles", "analysis", "timing", "plots"},  # plain data, rules and drawing
    {"tables", "observations", "order_check", "order_remedies", "robustness", "released", "precision", "explorer", "report", "warm"},  # f(study) -> a table or a plan
    {"core", "sharding"},  # the Study, which hands out its tables
    {"bench", "gpu_check", "findings_cells", "__main__", "__init__"},  # entry points
]


def module_name(path: Path) -> str:
    parts = list(path.relative_to(REPO).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def is_package(name: str) -> bool:
    return (REPO / Path(*name.split(".")) / "__init__.py").is_file()


def exists(name: str) -> bool:
    p = REPO / Path(*name.split("."))
    return p.with_suffix(".py").is_file() or (p / "__init__.py").is_file()


def imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    skip = set()
    for node in ast.walk(tree):  # imports under `if TYPE_CHECKING:` are for annotations only
        if isinstance(node, ast.If) and getattr(node.test, "id", None) == "TYPE_CHECKING":
            skip.update(id(n) for b in node.body for n in ast.walk(b))
    me = module_name(path)
    package = me if path.name == "__init__.py" else me.rpartition(".")[0]
    out = set()
    for node in ast.walk(tree):
        if id(node) in skip:
            continue
        if isinstance(node, ast.Import):
            out.update(a.name for a in node.names if a.name.startswith("corelib"))
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if not target.startswith("corelib"):
                continue
            for a in node.names:  # `from pkg import submodule` imports the submodule
                sub = f"{target}.{a.name}"
                out.add(sub if exists(sub) else target)
    return {t for t in out if t != me}


def graph() -> dict[str, set[str]]:
    return {module_name(p): imports(p) for p in ROOT.rglob("*.py")}


def test_no_import_cycle():
    g = graph()
    state, stack, cycles = {}, [], []

    def visit(n):
        state[n] = "open"
        stack.append(n)
        for m in sorted(g.get(n, ())):
            if state.get(m) == "open":
                cycles.append(stack[stack.index(m):] + [m])
            elif m not in state:
                visit(m)
        stack.pop()
        state[n] = "done"

    for n in sorted(g):
        if n not in state:
            visit(n)
    assert not cycles, "import cycles:\n" + "\n".join(" -> ".join(c) for c in cycles)


def study_layer(name: str) -> int:
    part = name.split(".")[2] if name.count(".") >= 2 else "__init__"
    return next(i for i, layer in enumerate(STUDY_LAYERS) if part in layer)


def test_the_library_never_imports_the_study_and_the_study_imports_no_layer_above():
    bad = []
    for n, targets in graph().items():
        for t in targets:
            if not n.startswith("corelib.study") and t.startswith("corelib.study"):
                bad.append(f"library {n} imports study {t}")
            elif n.startswith("corelib.study") and t.startswith("corelib.study") and t != "corelib.study":
                if study_layer(t) > study_layer(n):
                    bad.append(f"{n} (layer {study_layer(n)}) imports {t} (layer {study_layer(t)})")
    assert not bad, "\n".join(sorted(bad))


def test_the_graph_sees_imports_inside_functions():
    g = graph()
    assert "corelib.first_stage" in g["corelib.study.core"]  # a top-level import
    assert "corelib.study.tables" in g["corelib.study.core"]  # inside the `tables` property
    assert "corelib.study.core" not in g["corelib.study.tables.table1"]  # only under TYPE_CHECKING
