"""Issue #17: the inference package and the efficiency harness keep functions short enough to
read in one screen (80 lines); a longer one is a sign that two jobs share it."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
LIMIT = 80


def test_no_function_longer_than_80_lines():
    files = [ROOT / "evaluation" / "efficiency.py", *sorted((ROOT / "pipeline" / "inference").glob("*.py"))]
    long = []
    for path in files:
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                lines = node.end_lineno - node.lineno + 1
                if lines > LIMIT:
                    long.append(f"{path.relative_to(ROOT)}:{node.lineno} {node.name} ({lines} lines)")
    assert len(files) > 5 and not long, long
