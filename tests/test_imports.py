"""The import graph of `resize_pipeline/` and `workers/` has no cycle.

Edges are the explicit imports of each module, at module level or inside functions (a lazy import
is still a dependency). Importing a submodule also runs its parent package's ``__init__``: those
implicit edges are left out, and instead every package ``__init__`` is held to importing only its
own submodules (or nothing) at module level, so they cannot close a cycle.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("resize_pipeline", "workers")


def _modules() -> dict[str, Path]:
    out = {}
    for pkg in PACKAGES:
        for path in sorted((ROOT / pkg).rglob("*.py")):
            parts = list(path.relative_to(ROOT).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts = parts[:-1]
            out[".".join(parts)] = path
    return out


def _resolve(name: str, modules: dict[str, Path]) -> str | None:
    """The longest known module that `name` is or lies in (``pkg.mod.attr`` -> ``pkg.mod``)."""
    while name:
        if name in modules:
            return name
        name = name.rpartition(".")[0]
    return None


def _imports(mod: str, path: Path, modules: dict[str, Path]) -> tuple[set[str], set[str]]:
    """(every import, module-level imports) of `mod`, as known module names."""
    tree = ast.parse(path.read_text(), str(path))
    is_pkg = path.name == "__init__.py"
    base = mod if is_pkg else mod.rpartition(".")[0]
    every, top = set(), set()

    def targets(node) -> list[str]:
        if isinstance(node, ast.Import):
            return [a.name for a in node.names]
        if node.level:
            anchor = base.rsplit(".", node.level - 1)[0] if node.level > 1 else base
            prefix = f"{anchor}.{node.module}" if node.module else anchor
        else:
            prefix = node.module or ""
        # `from pkg import submodule` imports the submodule; `from mod import name` imports mod
        return [f"{prefix}.{a.name}" if f"{prefix}.{a.name}" in modules else prefix for a in node.names]

    for node in ast.walk(tree):
        if isinstance(node, ast.Import | ast.ImportFrom):
            for t in targets(node):
                r = _resolve(t, modules)
                if r and r != mod:
                    every.add(r)
    for node in tree.body:
        if isinstance(node, ast.Import | ast.ImportFrom):
            for t in targets(node):
                r = _resolve(t, modules)
                if r and r != mod:
                    top.add(r)
    return every, top


def _graph() -> tuple[dict[str, set[str]], dict[str, set[str]]]:
    modules = _modules()
    every, top = {}, {}
    for mod, path in modules.items():
        every[mod], top[mod] = _imports(mod, path, modules)
    return every, top


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    out: list[list[str]] = []
    counter = [0]

    def visit(v: str) -> None:
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def test_the_graph_is_real():
    every, _ = _graph()
    assert "resize_pipeline.runner" in every["resize_pipeline.engine.local"]
    assert "resize_pipeline.runner" in every["workers.actors"]
    assert "workers.ray_engine" in every["resize_pipeline.conversion"]  # a lazy import counts


def test_no_import_cycles():
    every, _ = _graph()
    assert _cycles(every) == []


def test_package_inits_import_only_their_own_submodules():
    _, top = _graph()
    for mod in top:
        if (ROOT / mod.replace(".", "/") / "__init__.py").exists():
            foreign = {m for m in top[mod] if not m.startswith(mod + ".")}
            assert not foreign, f"{mod}/__init__.py imports {sorted(foreign)} at module level"


def test_no_cycles_between_subpackages():
    """Folded to subpackages (``resize_pipeline.learned``, ``resize_pipeline.engine``, ``workers`` ...),
    the graph has no cycle either: e.g. ``learned`` implements ``resize``'s interface, so ``resize``
    must not import ``learned``."""
    every, _ = _graph()

    def group(mod: str) -> str:
        parts = mod.split(".")
        return parts[0] if parts[0] == "workers" else ".".join(parts[:2])

    folded: dict[str, set[str]] = {}
    for mod, deps in every.items():
        folded.setdefault(group(mod), set()).update(group(d) for d in deps if group(d) != group(mod))
    assert _cycles(folded) == []


def test_a_short_job_imports_the_listing_code_of_its_source_kind_only():
    """Each source kind's module is imported when SOURCE is of that kind: converting a folder never
    imports the manifest, tar or Parquet-bytes readers (nor pyarrow's CSV/JSON readers)."""
    import subprocess
    import sys

    code = (
        "import sys\n"
        "from resize_pipeline.sources import list_source\n"
        "before = set(sys.modules)\n"
        f"list_source({str(ROOT / 'tests' / 'fixtures' / 'golden' / 'inputs')!r}).items\n"
        "print(sorted(m for m in set(sys.modules) if m.startswith(('resize_pipeline.sources.', 'pyarrow.'))))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT,
                         env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"}, timeout=120)
    assert out.returncode == 0, out.stderr
    loaded = out.stdout
    assert "resize_pipeline.sources.folder" in loaded
    for other in ("sources.manifest", "sources.tars", "sources.parquet_bytes", "pyarrow.csv", "pyarrow.json"):
        assert other not in loaded, other
