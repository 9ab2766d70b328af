"""The package's layers (.importlinter): every module has a layer, and none imports upward."""

import configparser
import pkgutil
import subprocess
import sys
from pathlib import Path

import cnnbench

ROOT = Path(__file__).resolve().parents[1]


def contract_layers() -> list[list[str]]:
    parser = configparser.ConfigParser()
    parser.read(ROOT / ".importlinter")
    lines = parser["importlinter:contract:layers"]["layers"].strip().splitlines()
    return [[m.strip() for m in line.replace("|", ":").split(":")] for line in lines]


def test_every_top_level_module_has_a_layer():
    named = {m for layer in contract_layers() for m in layer}
    modules = {f"cnnbench.{m.name}" for m in pkgutil.iter_modules(cnnbench.__path__)}
    assert modules - named == set(), "name each new module in .importlinter's layers"
    assert named - modules == set(), ".importlinter names a module that no longer exists"


def test_no_module_imports_upward_or_in_a_circle():
    lint = Path(sys.executable).with_name("lint-imports")
    done = subprocess.run([str(lint), "--no-cache"], cwd=ROOT, capture_output=True, text=True)
    assert done.returncode == 0, done.stdout[-3000:]
    assert "Contracts: 1 kept, 0 broken." in done.stdout


def test_no_import_circle_anywhere():
    """Strongly connected groups of the whole import graph (imports inside functions too):
    none has more than one module."""
    import grimp

    graph = grimp.build_graph("cnnbench", cache_dir=None)
    index, low, stack, on, circles = {}, {}, [], set(), []

    def visit(module):
        index[module] = low[module] = len(index)
        stack.append(module)
        on.add(module)
        for other in graph.find_modules_directly_imported_by(module):
            if other not in index:
                visit(other)
                low[module] = min(low[module], low[other])
            elif other in on:
                low[module] = min(low[module], index[other])
        if low[module] == index[module]:
            group = []
            while not group or group[-1] != module:
                group.append(stack.pop())
                on.discard(group[-1])
            if len(group) > 1:
                circles.append(sorted(group))

    for module in sorted(graph.modules):
        if module not in index:
            visit(module)
    assert circles == []
