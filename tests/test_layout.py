"""The package's shape, kept by tests: no import cycle (imports inside functions count too), no
module over 450 lines, the option contract and the command line light (no torch, Ray, diffusers,
rembg or transformers imported to read them), and the stage code free of "is this remote?"."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "synthgen"
MAX_LINES = 450


def _modules(root: Path = PACKAGE) -> dict[str, Path]:
    out = {}
    for f in sorted(root.rglob("*.py")):
        parts = list(f.relative_to(root.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = f
    return out


def _imports(name: str, path: Path, modules: dict[str, Path]) -> set[str]:
    """The synthgen modules ``name`` imports, anywhere in its body (``from pkg import mod`` is
    ``pkg.mod`` when that is a module)."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        targets: list[str] = []
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(parts + ([base] if base else []))
            targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in modules else base for a in node.names]
        for t in targets:
            while t and t not in modules:
                t = t.rpartition(".")[0]
            if t and t != name:
                found.add(t)
    return found


def import_cycles(modules: dict[str, Path]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan)."""
    graph = {m: _imports(m, p, modules) for m, p in modules.items()}
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    cycles: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in graph[v]:
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
                cycles.append(sorted(comp))

    for v in graph:
        if v not in index:
            visit(v)
    return cycles


def test_no_import_cycle_in_the_package():
    assert import_cycles(_modules()) == []


def test_the_cycle_finder_finds_one(tmp_path):
    pkg = tmp_path / "synthgen"
    (pkg / "a").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "a" / "__init__.py").write_text("")
    (pkg / "a" / "x.py").write_text("def f():\n    from synthgen.b import y\n")
    (pkg / "b.py").write_text("from synthgen.a import x\ny = 1\n")
    assert import_cycles(_modules(pkg)) == [["synthgen.a.x", "synthgen.b"]]


def test_no_module_is_over_450_lines():
    long = {str(p.relative_to(PACKAGE)): n for p in PACKAGE.rglob("*.py")
            if (n := len(p.read_text(encoding="utf-8").splitlines())) > MAX_LINES}
    assert long == {}


def test_the_contract_and_the_command_line_import_nothing_heavy():
    code = ("import sys, synthgen.commands, synthgen.cli, synthgen.api, synthgen.workflow; "
            "print(sorted(m for m in ('torch', 'ray', 'diffusers', 'rembg', 'transformers', 'fsspec', 'PIL', "
            "'numpy') if m in sys.modules))")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and r.stdout.strip() == "[]", r.stdout + r.stderr


def test_stage_code_does_not_ask_which_kind_of_path_it_holds():
    """Local folders and object stores answer one protocol (synthgen/storage); outside it at most
    three questions about the kind remain, each saying on its line why it is inherent."""
    import re

    asks = re.compile(r"is_remote\(|RemotePath|LocalPath|\bpath\.remote\b")
    found = [f"{p.relative_to(PACKAGE)}:{i}: {line.strip()}"
             for p in sorted(PACKAGE.rglob("*.py")) if "storage" not in p.relative_to(PACKAGE).parts
             for i, line in enumerate(p.read_text(encoding="utf-8").splitlines(), 1) if asks.search(line)]
    assert len(found) <= 3, found
    assert all("inherent" in line for line in found), found
