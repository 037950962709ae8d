"""No clock is read at import or collection time, in the suite or the service.

A value such as ``exp = time.time() + 600`` in a ``parametrize`` list, a module constant or a default
argument is computed when the module is imported; once the suite takes longer than the margin it expires
and the test fails at random. Such values must be computed when the test (or the call) runs.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
CLOCK_CALLS = {
    ("time", "time"),
    ("time", "time_ns"),
    ("time", "monotonic"),
    ("time", "perf_counter"),
    ("datetime", "now"),
    ("datetime", "utcnow"),
    ("datetime", "today"),
    ("date", "today"),
}


def _is_clock_call(node: ast.AST) -> bool:
    if not isinstance(node, ast.Call) or not isinstance(node.func, ast.Attribute):
        return False
    owner = node.func.value
    owner_name = owner.attr if isinstance(owner, ast.Attribute) else getattr(owner, "id", None)
    return (owner_name, node.func.attr) in CLOCK_CALLS


def _eager_nodes(tree: ast.Module) -> Iterator[ast.AST]:
    """Every expression evaluated at import time: module and class bodies, decorators, default values.

    Function bodies and lambdas are skipped: they run when called.
    """
    pending: list[ast.AST] = list(tree.body)
    while pending:
        node = pending.pop()
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            pending.extend(node.decorator_list)
            pending.extend(node.args.defaults)
            pending.extend(d for d in node.args.kw_defaults if d is not None)
            continue
        if isinstance(node, ast.Lambda):
            pending.extend(node.args.defaults)
            continue
        yield node
        pending.extend(ast.iter_child_nodes(node))


def clock_reads_at_import(source: str) -> list[int]:
    """Line numbers of clock reads that run when the module is imported."""
    return sorted(node.lineno for node in _eager_nodes(ast.parse(source)) if _is_clock_call(node))


def _python_files() -> list[Path]:
    roots = [ROOT / "controlplane", ROOT / "tests", ROOT / "tenant_schema", ROOT / "alembic", ROOT / "ops"]
    return sorted(path for root in roots for path in root.rglob("*.py"))


def test_the_detector_finds_eager_clock_reads_and_ignores_lazy_ones() -> None:
    eager = """
import time
from datetime import datetime
NOW = time.time()
@pytest.mark.parametrize("exp", [int(time.time()) + 600])
def test(exp, when=datetime.now()):
    return time.time()
class K:
    at = datetime.now()
lazy = lambda: time.monotonic()
"""
    assert clock_reads_at_import(eager) == [4, 5, 6, 9]


def test_no_clock_read_at_import_time() -> None:
    offenders = {str(path.relative_to(ROOT)): clock_reads_at_import(path.read_text()) for path in _python_files()}
    assert {path: lines for path, lines in offenders.items() if lines} == {}
