"""The layout's rules, read from the source (docs/architecture.md): allowed dependencies, no import cycle (function-
level imports included), no module too long, and nothing done at import."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

from tests.conftest import ROOT

PACKAGES = ("toolclash", "users", "checks", "bench")
MAX_LINES = 620
"""About 600 lines: a module longer than that holds more than one idea."""

FORBIDDEN = {
    "toolclash": ("locust", "users", "checks", "bench"),
    "users": ("checks", "bench"),
    "checks": ("locust", "users", "bench"),
}
"""Package → what it may never import: the core is Locust-free, the verdict is judged in checks/ only."""


def modules() -> dict[str, Path]:
    out = {}
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            parts = path.relative_to(ROOT).with_suffix("").parts
            name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
            out[name] = path
    return out


def imports(path: Path, name: str, known: set[str]) -> set[str]:
    """Every project module *path* imports, anywhere in the file (function level too), TYPE_CHECKING aside."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()

    def add(target: str) -> None:
        while target and target not in known:
            target = target.rpartition(".")[0]
        if target and target != name:
            found.add(target)

    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            node.body = []
        if isinstance(node, ast.Import):
            for alias in node.names:
                add(alias.name)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parent = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(parent + ([base] if base else []))
            for alias in node.names:
                add(f"{base}.{alias.name}" if f"{base}.{alias.name}" in known else base)
    return found


def external_imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    out: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and not node.level and node.module:
            out.add(node.module.split(".")[0])
    return out


def graph() -> dict[str, set[str]]:
    mods = modules()
    known = set(mods)
    return {name: imports(path, name, known) for name, path in mods.items()}


def test_no_import_cycle_even_through_function_level_imports() -> None:
    edges = graph()
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    cycles: list[list[str]] = []

    def visit(v: str) -> None:  # Tarjan's strongly connected components
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in edges.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                cycles.append(sorted(component))

    sys.setrecursionlimit(10_000)
    for v in edges:
        if v not in index:
            visit(v)
    assert not cycles, cycles


def test_allowed_dependencies() -> None:
    mods = modules()
    bad = []
    for name, path in mods.items():
        package = name.split(".")[0]
        for forbidden in FORBIDDEN.get(package, ()):
            if forbidden in external_imports(path):
                bad.append(f"{name} imports {forbidden}")
    assert not bad, bad


def test_no_module_is_too_long() -> None:
    long = {name: n for name, path in modules().items()
            if (n := len(path.read_text(encoding="utf-8").splitlines())) > MAX_LINES}
    assert not long, long


def test_nothing_connects_or_starts_at_import() -> None:
    """Importing every module of the core, the checks and the agents opens no socket, starts no thread and
    spawns no process (Locust imports locustfiles before it forks, and in every worker)."""
    code = (
        "import threading, socket, subprocess, sys\n"
        "sockets = []\n"
        "real = socket.socket.__init__\n"
        "def spy(self, *a, **k):\n"
        "    sockets.append(a)\n"
        "    real(self, *a, **k)\n"
        "socket.socket.__init__ = spy\n"
        "popen = subprocess.Popen.__init__\n"
        "def no_spawn(self, *a, **k):\n"
        "    raise AssertionError(f'spawned at import: {a}')\n"
        "subprocess.Popen.__init__ = no_spawn\n"
        "before = threading.active_count()\n"
        f"import importlib\nfor m in {sorted(n for n in modules() if not n.startswith('bench'))!r}:\n"
        "    if m.endswith('__main__'): continue\n"
        "    importlib.import_module(m)\n"
        "assert threading.active_count() == before, threading.enumerate()\n"
        "assert not sockets, sockets\n"
        "print('ok')\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120,
                          check=False)
    assert proc.returncode == 0 and proc.stdout.strip().endswith("ok"), proc.stdout[-2000:] + proc.stderr[-3000:]


def test_no_test_imports_locust_into_the_pytest_process() -> None:
    """Importing Locust monkey-patches the whole process with gevent: a test module that imports it (or a project
    module that imports it) changes how every later test's threads, pipes and sockets behave."""
    mods = modules()
    edges = graph()
    with_locust = {name for name, path in mods.items() if "locust" in external_imports(path)}
    changed = True
    while changed:  # every module that reaches Locust through project imports
        grown = with_locust | {name for name, deps in edges.items() if deps & with_locust}
        changed, with_locust = grown != with_locust, grown
    known = set(mods)
    bad = []
    for path in sorted((ROOT / "tests").glob("*.py")):
        if "locust" in external_imports(path):
            bad.append(f"{path.name} imports locust")
        for dep in imports(path, f"tests.{path.stem}", known) & with_locust:
            bad.append(f"{path.name} imports {dep}, which imports locust")
    assert not bad, bad
