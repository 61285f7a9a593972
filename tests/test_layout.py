"""The package's folders follow the flow (release -> store -> access -> tools) and imports point one way."""

from __future__ import annotations

import ast
from pathlib import Path

import build_db

PACKAGE = Path(build_db.__file__).parent
RANK = {"release": 0, "store": 1, "access": 2, "serve": 3, "tools": 4}


def _imports() -> dict[str, set[str]]:
    """Module -> the package's modules it imports (relative imports, at any depth in the file)."""
    mods = {}
    for p in PACKAGE.rglob("*.py"):
        parts = ["build_db", *p.relative_to(PACKAGE).with_suffix("").parts]
        is_pkg = parts[-1] == "__init__"
        mods[".".join(parts[:-1] if is_pkg else parts)] = (p, is_pkg)
    edges = {}
    for name, (path, is_pkg) in mods.items():
        pkg = name if is_pkg else name.rsplit(".", 1)[0]
        out = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.level:
                base = pkg.split(".")[: len(pkg.split(".")) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
                for cand in ([target] if node.module else []) + [f"{target}.{a.name}" for a in node.names]:
                    if cand in mods and cand != name:
                        out.add(cand)
        edges[name] = out
    return edges


def test_no_import_circles():
    edges = _imports()
    state: dict[str, int] = {}

    def visit(u: str, path: list[str]) -> None:
        state[u] = 1
        for v in edges[u]:
            assert state.get(v) != 1, "import circle: " + " -> ".join(path[path.index(v) :] + [v])
            if v not in state:
                visit(v, path + [v])
        state[u] = 2

    for u in edges:
        if u not in state:
            visit(u, [u])


def test_imports_point_down_the_flow():
    upward = [
        f"{m} -> {v}"
        for m, out in _imports().items()
        for v in out
        if m.count(".") >= 1
        and v.count(".") >= 1
        and m.split(".")[1] in RANK
        and v.split(".")[1] in RANK
        and RANK[v.split(".")[1]] > RANK[m.split(".")[1]]
    ]
    assert upward == []


def test_every_module_says_what_it_is():
    for p in PACKAGE.rglob("*.py"):
        if p.name != "__main__.py":
            assert ast.get_docstring(ast.parse(p.read_text())), f"{p} has no module docstring"


def test_the_public_api_is_fully_typed():
    """Every public function names the types of its parameters and its result (mypy checks them: make
    typecheck, which CI runs)."""
    import inspect

    import build_db

    for name in build_db.__all__:
        obj = getattr(build_db, name)
        if inspect.isfunction(obj):
            sig = inspect.signature(obj)
            untyped = [p for p, v in sig.parameters.items() if v.annotation is inspect.Parameter.empty]
            assert not untyped and sig.return_annotation is not inspect.Signature.empty, (name, untyped)
