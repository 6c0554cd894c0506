"""No import circles between the project's modules.

Two checks, because a circle shows up in two ways:
- statically: the graph of every `import` statement (module level *and* inside functions, where
  a lazy import only hides a circle until the function runs; `if TYPE_CHECKING:` blocks aside)
  must have no strongly connected component;
- dynamically: every module, imported *first* into an interpreter that holds none of the
  project's modules (third-party ones stay loaded, which keeps it to a few seconds), must
  import; a top-level circle fails on one of these orders even where the usual order hides it.
"""

from __future__ import annotations

import ast
import subprocess
import sys
import textwrap
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("pipeline", "data_prepare", "coarse_seg", "fine_seg", "evaluation")


def project_modules() -> dict[str, Path]:
    out: dict[str, Path] = {}
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            parts = list(path.relative_to(ROOT).with_suffix("").parts)
            if parts[-1] == "__main__":
                continue  # runs the CLI when imported
            if parts[-1] == "__init__":
                parts = parts[:-1]
            out[".".join(parts)] = path
    return out


def imported_modules(name: str, path: Path, known: dict[str, Path]) -> set[str]:
    """Project modules that `name` imports anywhere in its body (TYPE_CHECKING blocks aside)."""
    package = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
    found: set[str] = set()
    for node in _walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name in known}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join([*package[: len(package) - node.level + 1], *([base] if base else [])])
            for alias in node.names:
                sub = f"{base}.{alias.name}"
                found.add(sub if sub in known else base)
    found.discard(name)
    return found & known.keys()


def _walk(node: ast.AST):
    for child in ast.iter_child_nodes(node):
        if isinstance(child, ast.If) and "TYPE_CHECKING" in ast.unparse(child.test):
            continue
        yield child
        yield from _walk(child)


def circles(graph: dict[str, set[str]]) -> list[frozenset[str]]:
    """Strongly connected components of more than one module (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    out: list[frozenset[str]] = []
    for root in sorted(graph):
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = len(index)
        stack.append(root)
        on_stack.add(root)
        while work:
            node, edges = work[-1]
            nxt = next(edges, None)
            if nxt is not None:
                if nxt not in index:
                    index[nxt] = low[nxt] = len(index)
                    stack.append(nxt)
                    on_stack.add(nxt)
                    work.append((nxt, iter(sorted(graph[nxt]))))
                elif nxt in on_stack:
                    low[node] = min(low[node], index[nxt])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                comp = set()
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    comp.add(member)
                    if member == node:
                        break
                if len(comp) > 1:
                    out.append(frozenset(comp))
    return out


def import_graph() -> dict[str, set[str]]:
    known = project_modules()
    return {name: imported_modules(name, path, known) for name, path in known.items()}


def test_circle_finder_sees_a_circle_hidden_in_a_function():
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}, "e": set()}
    assert circles(graph) == [frozenset({"a", "b", "c"})]
    assert circles({"a": {"b"}, "b": set()}) == []


def test_no_import_circles_between_project_modules():
    found = circles(import_graph())
    assert not found, "import circles: " + "; ".join(" ↔ ".join(sorted(c)) for c in found)


IMPORT_EACH_FIRST = textwrap.dedent("""
    import importlib, sys
    packages, names = sys.argv[1].split(","), sys.argv[2].split(",")
    for name in names:
        for key in [k for k in sys.modules if k.split(".")[0] in packages]:
            del sys.modules[key]
        try:
            importlib.import_module(name)
        except Exception as exc:
            print(f"{name}: {exc.__class__.__name__}: {exc}")
""")


def import_each_first(names: list[str], packages: tuple[str, ...], cwd: Path) -> str:
    """What fails when each module is the first project module an interpreter imports."""
    proc = subprocess.run([sys.executable, "-c", IMPORT_EACH_FIRST, ",".join(packages), ",".join(names)], cwd=cwd,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return proc.stdout


def test_import_each_first_exposes_a_top_level_circle(tmp_path):
    pkg = tmp_path / "circ"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "a.py").write_text("from circ.b import g\n\ndef f():\n    return g\n")
    (pkg / "b.py").write_text("from circ.a import f\n\ndef g():\n    return f\n")
    out = import_each_first(["circ.a", "circ.b"], ("circ",), tmp_path)
    assert out.startswith("circ.a: ImportError") and "circ.b: ImportError" in out


def test_every_module_imports_first_in_a_fresh_interpreter():
    assert import_each_first(sorted(project_modules()), PACKAGES, ROOT) == ""
