"""The worker package's imports point one way (docs/architecture.md), checked from the source.

- The pipeline steps, in order: ingest → fanout → calls → outcomes. A step may import a later
  step (ingest hands events to fan-out), never an earlier one.
- Support modules (entries, dedup, db, models, keys, services, ...) import no step and no
  entry point: they are the building blocks every step may use.
- Entry points (the processes, the CLI, replay) may import anything; nothing below them
  imports them.
- No import circle anywhere, counting imports inside functions and under TYPE_CHECKING.

A new module is a support module unless it is listed below: add it to STEPS or ENTRY_POINTS
when it drives the pipeline or serves a process.
"""

from __future__ import annotations

import ast
from pathlib import Path

import worker

WORKER = Path(worker.__file__).parent
STEPS = ["ingest", "fanout", "calls", "outcomes"]
# The web process's feature modules (api, webhooks) serve requests: entry points too.
ENTRY_POINTS = {"__main__", "app", "web", "api", "webhooks", "replay", "cli", "cli_support",
                "metrics_http"}


def _is_entry_point(module: str) -> bool:
    return module in ENTRY_POINTS or module.startswith("cli_")


def _worker_imports(path: Path) -> set[str]:
    """Names of the worker modules ``path`` imports, anywhere in the file."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.startswith("worker."):
                    found.add(alias.name.split(".")[1])
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            if node.module == "worker":
                found.update(alias.name for alias in node.names)
            elif node.module.startswith("worker."):
                found.add(node.module.split(".")[1])
    return found


def _graph() -> dict[str, set[str]]:
    modules = {p.stem: p for p in WORKER.glob("*.py") if p.stem != "__init__"}
    graph = {name: _worker_imports(path) - {name} for name, path in modules.items()}
    unknown = {dep for deps in graph.values() for dep in deps} - set(graph)
    assert not unknown, f"imports of modules that do not exist: {sorted(unknown)}"
    return graph


def test_the_steps_exist() -> None:
    graph = _graph()
    assert set(STEPS) <= set(graph)
    assert {"app", "cli", "replay"} <= set(graph)


def test_a_pipeline_step_imports_no_earlier_step() -> None:
    graph = _graph()
    wrong = [
        f"{step} imports {dep} (an earlier step)"
        for i, step in enumerate(STEPS)
        for dep in graph[step]
        if dep in STEPS and STEPS.index(dep) < i
    ]
    assert not wrong, wrong


def test_support_modules_import_no_step_and_no_entry_point() -> None:
    graph = _graph()
    support = [m for m in graph if m not in STEPS and not _is_entry_point(m)]
    assert {"entries", "dedup", "db", "models", "keys", "services", "dead_letters"} <= set(support)
    wrong = [
        f"{module} imports {dep}"
        for module in support
        for dep in graph[module]
        if dep in STEPS or _is_entry_point(dep)
    ]
    assert not wrong, wrong


def test_no_step_imports_an_entry_point() -> None:
    graph = _graph()
    wrong = [f"{step} imports {dep}" for step in STEPS for dep in graph[step]
             if _is_entry_point(dep)]
    assert not wrong, wrong


def test_there_is_no_import_circle() -> None:
    graph = _graph()
    done: set[str] = set()

    def visit(module: str, path: list[str]) -> None:
        if module in path:
            cycle = [*path[path.index(module):], module]
            raise AssertionError(f"import circle: {' → '.join(cycle)}")
        if module in done:
            return
        for dep in sorted(graph[module]):
            visit(dep, [*path, module])
        done.add(module)

    for module in sorted(graph):
        visit(module, [])
