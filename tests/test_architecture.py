"""The shape of the code, checked: dependencies point one way, even counting imports inside functions.

- no import cycle among bot/ and workers/ modules;
- the core (bot/core) imports no transport, queue or store: no Flask, Bolt, slack_sdk, RQ, redis,
  gunicorn, gevent, and nothing of bot/ outside bot/core, nothing of workers/;
- bot/ imports workers/ only in bot/wiring.py (the one module that wires a process together);
- the stages import only earlier stages: request → decision → grant → revoke;
- views (Block Kit) are pure: no Redis, no Slack client, no runtime;
- an import inside a function is an exception, with its reason on the same line.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("bot", "workers")
THIRD_PARTY_EDGES = ("flask", "slack_bolt", "slack_sdk", "rq", "redis", "gunicorn", "gevent", "werkzeug")
STAGES = ("bot.request", "bot.decision", "bot.grant", "bot.revoke")


def module_name(path: Path) -> str:
    rel = path.relative_to(ROOT).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def modules() -> dict[str, Path]:
    return {module_name(p): p for pkg in PACKAGES for p in sorted((ROOT / pkg).rglob("*.py"))}


def imports(path: Path) -> list[tuple[str, bool, int]]:
    """(imported module, inside a function?, line) for every import in the file."""
    known = modules()
    tree = ast.parse(path.read_text(encoding="utf-8"))
    found: list[tuple[str, bool, int]] = []

    def visit(node: ast.AST, in_function: bool) -> None:
        for child in ast.iter_child_nodes(node):
            inner = in_function or isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef)
            if isinstance(child, ast.Import):
                found.extend((a.name, in_function, child.lineno) for a in child.names)
            elif isinstance(child, ast.ImportFrom) and child.module and not child.level:
                # `from pkg import sub` depends on pkg.sub when sub is a module, else on pkg itself
                for a in child.names:
                    sub = f"{child.module}.{a.name}"
                    found.append((sub if sub in known else child.module, in_function, child.lineno))
            visit(child, inner)

    visit(tree, False)
    return found


def project_graph() -> dict[str, set[str]]:
    mods = modules()
    graph: dict[str, set[str]] = {m: set() for m in mods}
    for name, path in mods.items():
        for imported, _, _ in imports(path):
            if imported in mods and imported != name:
                graph[name].add(imported)
    return graph


def test_there_is_no_import_cycle_even_counting_imports_inside_functions():
    graph = project_graph()
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    cycles: list[list[str]] = []
    counter = [0]

    def strongconnect(v: str) -> None:  # Tarjan
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on_stack.add(v)
        for w in graph[v]:
            if w not in index:
                strongconnect(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                cycles.append(sorted(component))

    for v in graph:
        if v not in index:
            strongconnect(v)
    assert not cycles, f"import cycles: {cycles}"


def _violations(rule) -> list[str]:
    out = []
    for name, path in modules().items():
        for imported, _, line in imports(path):
            why = rule(name, imported)
            if why:
                out.append(f"{path.relative_to(ROOT)}:{line}: {name} imports {imported}: {why}")
    return out


def test_the_core_imports_no_transport_queue_or_store():
    def rule(name: str, imported: str) -> str | None:
        if not name.startswith("bot.core"):
            return None
        top = imported.split(".")[0]
        if top in THIRD_PARTY_EDGES:
            return "the core stays free of transports, queues and Redis"
        if imported.startswith(("bot.", "workers")) and not imported.startswith("bot.core"):
            return "the core depends on nothing of jit outside it"
        return None

    assert not _violations(rule)


def test_bot_imports_workers_only_where_a_process_is_wired():
    def rule(name: str, imported: str) -> str | None:
        if name.startswith("bot") and imported.split(".")[0] == "workers" and name != "bot.wiring":
            return "only bot/wiring.py may import workers/"
        return None

    assert not _violations(rule)


def test_each_stage_imports_only_earlier_stages():
    def stage(module: str) -> int | None:
        return next((i for i, s in enumerate(STAGES) if module == s or module.startswith(s + ".")), None)

    def rule(name: str, imported: str) -> str | None:
        mine, theirs = stage(name), stage(imported)
        if mine is not None and theirs is not None and theirs > mine:
            return f"{STAGES[mine]} comes before {STAGES[theirs]}"
        return None

    assert not _violations(rule)


def test_views_are_pure():
    def rule(name: str, imported: str) -> str | None:
        if not name.startswith("bot.decision.slack.views"):
            return None
        if imported.split(".")[0] in THIRD_PARTY_EDGES or imported.startswith(("bot.store", "bot.runtime")):
            return "a view takes values and returns Block Kit: no Redis, no Slack client, no runtime"
        return None

    assert not _violations(rule)


#: Function-local imports of project modules allowed, each with its reason on the same line.
MAX_LOCAL_IMPORTS = 10


def test_imports_inside_functions_are_few_and_say_why():
    local = []
    for path in modules().values():
        lines = path.read_text(encoding="utf-8").splitlines()
        for imported, in_function, line in imports(path):
            if in_function and imported.split(".")[0] in PACKAGES + ("jit_client", "bench"):
                local.append((path.relative_to(ROOT), line, lines[line - 1]))
    unexplained = [f"{p}:{n}: {text.strip()}" for p, n, text in local if "#" not in text]
    assert not unexplained, "a function-local import needs its reason on the same line:\n" + "\n".join(unexplained)
    assert len({(p, n) for p, n, _ in local}) <= MAX_LOCAL_IMPORTS, local


@pytest.mark.parametrize("package", ["bot/core", "bot/store", "bot/request", "bot/decision", "bot/grant", "bot/revoke"])
def test_every_module_says_what_lives_there(package):
    for path in sorted((ROOT / package).rglob("*.py")):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        if path.name == "__init__.py" and not tree.body:
            continue
        assert ast.get_docstring(tree), f"{path.relative_to(ROOT)} has no docstring saying what lives there"
