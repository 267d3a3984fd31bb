"""Code-shape rules from DESIGN.md that a review would otherwise have to re-check by hand."""

import ast
import pathlib

PACKAGE = pathlib.Path(__file__).parent.parent / "slt_jax"
MAX_FUNCTION_LINES = 80  # of code: the docstring does not count


def _code_lines(node: ast.FunctionDef) -> int:
    body = node.body
    first = body[0]
    if isinstance(first, ast.Expr) and isinstance(getattr(first, "value", None), ast.Constant):
        if isinstance(first.value.value, str) and len(body) > 1:
            first = body[1]
    return node.end_lineno - first.lineno + 1


def test_no_function_in_the_package_is_longer_than_80_lines():
    long = []
    for path in sorted(PACKAGE.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                lines = _code_lines(node)
                if lines > MAX_FUNCTION_LINES:
                    long.append(f"{path.relative_to(PACKAGE.parent)}:{node.name} ({lines} lines)")
    assert not long, "split these into named steps: " + ", ".join(long)


def test_no_module_level_mutable_state_in_the_driver():
    """The sampling driver keeps no process-wide slots (trace counters, active progress bars)."""
    tree = ast.parse((PACKAGE / "sampling.py").read_text())
    mutable = [
        [getattr(target, "id", "?") for target in node.targets]
        for node in tree.body
        if isinstance(node, ast.Assign) and isinstance(node.value, (ast.List, ast.Dict, ast.Set))
    ]
    assert [names for names in mutable if names != ["__all__"]] == []
