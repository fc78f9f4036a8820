"""The project's modules import each other without circles, and the layers go one way:
`pipelines` imports neither `server` nor `tools`, and in `server` no module imports a layer
above its own (`SERVER_LAYERS`, the architecture of docs/architecture.md)."""

from __future__ import annotations

import ast
import sys
import tomllib
from importlib import metadata
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

REPO = Path(__file__).resolve().parents[1]
PACKAGES = ("pipelines", "server", "tools", "bench")


def module_name(path: Path) -> str:
    parts = list(path.relative_to(REPO).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports_of(path: Path, name: str) -> set[str]:
    """The project modules that `path` (module `name`) imports, at any depth of the file
    (imports under TYPE_CHECKING included: they are circles too, only hidden)."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                base = ".".join(anchor + ([base] if base else []))
            found.add(base)
            found |= {f"{base}.{alias.name}" for alias in node.names}
    return {m for m in found if m.split(".")[0] in PACKAGES}


def graph() -> dict[str, set[str]]:
    files = {module_name(p): p for pkg in PACKAGES for p in (REPO / pkg).rglob("*.py")}
    return {name: {m for m in imports_of(path, name) if m in files and m != name} for name, path in files.items()}


def cycle(edges: dict[str, set[str]]) -> list[str]:
    """One import circle as a list of modules, or [] (depth-first search)."""
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str]:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(edges[node]):
            if state.get(nxt) == 1:
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in state and (found := visit(nxt)):
                return found
        state[node] = 2
        stack.pop()
        return []

    for node in sorted(edges):
        if node not in state and (found := visit(node)):
            return found
    return []


def test_the_checker_finds_a_circle() -> None:
    assert cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert cycle({"a": {"b"}, "b": set()}) == []


def test_no_import_circle() -> None:
    edges = graph()
    assert "server.api.generations" in edges["server.app"]  # the graph sees relative imports
    assert cycle(edges) == []


def test_pipelines_import_neither_server_nor_tools() -> None:
    wrong = {(name, m) for name, deps in graph().items() if name.startswith("pipelines")
             for m in deps if not m.startswith("pipelines")}
    assert wrong == set()


# ---- the server's layers -----------------------------------------------------------------

# Bottom first. A module may import its own part (the same prefix) and every layer below;
# the parts of one layer stand beside each other and import none of each other.
SERVER_LAYERS = (
    ("server.errors", "server.logs"),  # the error types, the logs' set-up: nothing heavy
    ("server.state",),  # records, URL images, cancels; redis/ (link, stores, global queue)
    ("server.engine",),  # the engine thread, scheduler, jobs, stats, batch caps
    ("server.jobs",),  # async jobs, webhooks
    ("server.settings", "server.world", "server.metrics", "server.trust"),
    ("server.runtime",),  # everything a request needs besides itself, built from the settings
    ("server.requests",),  # params models, spec and target, plans, admission, quality, usage, files
    ("server.delivery",),  # progress, following a job into its record, results, failures
    ("server.api", "server.claimer"),  # the routes; the global queue's worker
    ("server.app",),
    ("server.serving",),  # uvicorn, draining on SIGTERM
    ("server.__main__",),
)


def part_of(module: str) -> tuple[int, str] | None:
    """The layer (its index) and part (prefix) of a server module; None for the package."""
    for i, parts in enumerate(SERVER_LAYERS):
        for prefix in parts:
            if module == prefix or module.startswith(prefix + "."):
                return i, prefix
    return None


def arrows_up(edges: dict[str, set[str]]) -> set[tuple[str, str]]:
    """The imports that go to a layer above, or to another part of the same layer."""
    wrong = set()
    for name, deps in edges.items():
        here = part_of(name)
        for dep in deps:
            there = part_of(dep)
            if here and there and (there[0] > here[0] or there[0] == here[0] and there[1] != here[1]):
                wrong.add((name, dep))
    return wrong


def test_the_layer_check_sees_an_arrow_up_and_one_across() -> None:
    assert arrows_up({"server.state.records": {"server.engine.core"}, "server.engine.core": set()}) == {
        ("server.state.records", "server.engine.core")}
    assert arrows_up({"server.claimer": {"server.api.serve"}, "server.api.serve": {"server.requests.spec"}}) == {
        ("server.claimer", "server.api.serve")}


def test_every_server_module_has_a_layer() -> None:
    assert {name for name in graph() if name.startswith("server.") and part_of(name) is None} == set()


def test_no_server_module_imports_a_layer_above_its_own() -> None:
    assert arrows_up(graph()) == set()


# ---- what `make serve` imports: runtime dependencies only -------------------------------

def outside_imports(path: Path) -> set[str]:
    """Top-level names of the non-project modules `path` imports, except those under a `try:`
    (optional extras such as xformers, guarded where they are imported)."""
    tree = ast.parse(path.read_text())
    guarded = {id(n) for t in ast.walk(tree) if isinstance(t, ast.Try) for stmt in t.body for n in ast.walk(stmt)}
    names = set()
    for node in ast.walk(tree):
        if id(node) in guarded:
            continue
        if isinstance(node, ast.Import):
            names |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and not node.level and node.module:
            names.add(node.module.split(".")[0])
    return {n for n in names if n not in PACKAGES and n not in sys.stdlib_module_names}


def reachable(edges: dict[str, set[str]], start: str) -> set[str]:
    """The project modules `start` imports, directly or not, and itself."""
    seen, todo = set(), [start]
    while todo:
        node = todo.pop()
        if node not in seen:
            seen.add(node)
            todo += sorted(edges[node] | {p for p in edges if node.startswith(p + ".")})  # packages' __init__
    return seen


def runtime_distributions() -> set[str]:
    """pyproject's `dependencies` and, as installed here, everything they require (no extras)."""
    wanted = [Requirement(r) for r in tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]]
    closure: set[str] = set()
    while wanted:
        req = wanted.pop()
        name = canonicalize_name(req.name)
        if name in closure or (req.marker is not None and not req.marker.evaluate({"extra": ""})):
            continue
        closure.add(name)
        wanted += [Requirement(r) for r in metadata.requires(name) or ()]
    return closure


def test_the_server_imports_only_runtime_dependencies() -> None:
    """`make serve` installs the project without extras: every module `python -m server`
    imports must import only what those dependencies bring."""
    edges, files = graph(), {module_name(p): p for pkg in PACKAGES for p in (REPO / pkg).rglob("*.py")}
    served = reachable(edges, "server.__main__")
    assert {"server.jobs.webhooks", "pipelines.attention"} <= served
    providers = metadata.packages_distributions()
    runtime = runtime_distributions()
    wrong = {(mod, name) for mod in served for name in outside_imports(files[mod])
             if not {canonicalize_name(d) for d in providers.get(name, [name])} & runtime}
    assert wrong == set(), f"imported by the server but only in an extra: {sorted(wrong)}"


def test_the_dependency_check_sees_a_dev_only_import(tmp_path: Path) -> None:
    module = tmp_path / "m.py"
    module.write_text("import httpx\nimport playwright.sync_api\n"
                      "try:\n    import xformers\nexcept ImportError:\n    pass\n")
    assert outside_imports(module) == {"httpx", "playwright"}
    assert "playwright" not in runtime_distributions() and "httpx" in runtime_distributions()
