"""Size rule from STYLE.md: modules under 500 lines, functions under 60 lines (fails the check above those)."""

from __future__ import annotations

import ast
import sys
from pathlib import Path

MODULE_LIMIT = 500
FUNCTION_LIMIT = 60


def main() -> int:
    problems: list[str] = []
    for path in sorted(Path("aipower").rglob("*.py")):
        source = path.read_text("utf-8")
        lines = source.count("\n")
        if lines > MODULE_LIMIT:
            problems.append(f"{path}: {lines} lines (limit {MODULE_LIMIT})")
        for node in ast.walk(ast.parse(source)):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                length = (node.end_lineno or node.lineno) - node.lineno + 1
                if length > FUNCTION_LIMIT:
                    problems.append(f"{path}:{node.lineno} {node.name}: {length} lines (limit {FUNCTION_LIMIT})")
    for problem in problems:
        print(problem)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
