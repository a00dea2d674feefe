"""The package's rooms and the one way its imports run (read with ast: nothing is imported).

The layer order is written once, here: a module may import its own room and the rooms after it.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import sealift

#: cli -> host -> bento -> bundle -> model -> serving -> core: each room may import only itself and the ones after it.
LAYERS = ("cli", "host", "bento", "bundle", "model", "serving", "core")
#: The package's own face (sealift/__init__.py, __main__.py) may import any room; no room may import it.
FACE = ("sealift", "sealift.__main__")
MAX_LINES = 600

PACKAGE = Path(sealift.__file__).resolve().parent


def _modules(root: Path) -> dict[str, Path]:
    """Dotted name -> file, for every .py under root (the service recipe and the net guard included)."""
    out = {}
    for path in sorted(root.rglob("*.py")):
        if "__pycache__" in path.parts:
            continue
        parts = (root.name, *path.relative_to(root).with_suffix("").parts)
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        out[name] = path
    return out


def _type_checking_nodes(tree: ast.AST) -> set[int]:
    """ids of the nodes under `if TYPE_CHECKING:` (imports for annotations only: they never run)."""
    skip: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            for child in node.body:
                skip.update(id(n) for n in ast.walk(child))
    return skip


def import_graph(root: Path) -> dict[str, set[str]]:
    """Module -> the modules of the same package it imports (at module level or inside functions)."""
    top = root.name
    modules = _modules(root)
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        tree = ast.parse(path.read_text(), filename=str(path))
        skip = _type_checking_nodes(tree)
        edges: set[str] = set()
        for node in ast.walk(tree):
            if id(node) in skip:
                continue
            if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module \
                    and node.module.split(".")[0] == top:
                for alias in node.names:
                    sub = f"{node.module}.{alias.name}"
                    edges.add(sub if sub in modules else node.module)
            elif isinstance(node, ast.ImportFrom) and node.level:
                raise AssertionError(f"{path}: relative import (sealift uses absolute imports)")
            elif isinstance(node, ast.Import):
                edges.update(a.name for a in node.names if a.name.split(".")[0] == top)
        graph[name] = edges - {name}
    return graph


def room(module: str) -> str | None:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 and parts[1] in LAYERS else None


def upward_imports(graph: dict[str, set[str]]) -> list[str]:
    """Every import that runs up a layer, into the package's face, or from a module outside any room."""
    bad = []
    for mod, edges in sorted(graph.items()):
        if mod in FACE:
            continue
        mine = room(mod)
        for dep in sorted(edges):
            theirs = room(dep)
            if mine is None or theirs is None:
                bad.append(f"{mod} -> {dep} (outside the rooms {', '.join(LAYERS)})")
            elif LAYERS.index(theirs) < LAYERS.index(mine):
                bad.append(f"{mod} -> {dep} ({mine} may not import {theirs})")
    return bad


def circles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Each import circle (a strongly connected set of more than one module), by Tarjan's algorithm."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            group = []
            while True:
                w = stack.pop()
                on.discard(w)
                group.append(w)
                if w == v:
                    break
            if len(group) > 1:
                found.append(sorted(group))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def test_imports_run_one_way() -> None:
    graph = import_graph(PACKAGE)
    assert len(graph) > 60, "the walk found too few modules: is PACKAGE the sealift package?"
    assert {room(m) for m in graph} - {None} == set(LAYERS)
    assert upward_imports(graph) == []


def test_no_import_circles() -> None:
    assert circles(import_graph(PACKAGE)) == []


def test_every_module_is_short_and_says_its_job() -> None:
    for name, path in _modules(PACKAGE).items():
        text = path.read_text()
        assert len(text.splitlines()) <= MAX_LINES, f"{name}: {len(text.splitlines())} lines (at most {MAX_LINES})"
        doc = ast.get_docstring(ast.parse(text))
        assert doc and doc.strip().splitlines()[0].strip(), f"{name}: no one-line docstring saying its job"


def test_each_room_says_what_it_may_import() -> None:
    for layer in LAYERS:
        doc = ast.get_docstring(ast.parse((PACKAGE / layer / "__init__.py").read_text()))
        assert doc, f"sealift/{layer}/__init__.py has no docstring"


def test_the_checker_catches_an_upward_import_and_a_circle(tmp_path: Path) -> None:
    """The walk above would pass on an empty graph; this proves it fails where it must."""
    pkg = tmp_path / "sealift"
    for layer in LAYERS:
        (pkg / layer).mkdir(parents=True)
        (pkg / layer / "__init__.py").write_text('"""room."""\n')
    (pkg / "__init__.py").write_text('"""face."""\n')
    (pkg / "core" / "a.py").write_text('"""a."""\ndef f():\n    from sealift.host import install\n')
    (pkg / "host" / "install.py").write_text('"""install."""\n')
    (pkg / "bundle" / "x.py").write_text('"""x."""\nfrom sealift.bundle import y\n')
    (pkg / "bundle" / "y.py").write_text('"""y."""\nimport sealift.bundle.x\n')
    (pkg / "model" / "t.py").write_text('"""t."""\nfrom typing import TYPE_CHECKING\n'
                                        'if TYPE_CHECKING:\n    from sealift.bento import b\n')
    (pkg / "bento" / "b.py").write_text('"""b."""\n')
    graph = import_graph(pkg)
    assert upward_imports(graph) == ["sealift.core.a -> sealift.host.install (core may not import host)"]
    assert circles(graph) == [["sealift.bundle.x", "sealift.bundle.y"]]


def test_the_public_face() -> None:
    """`import sealift` names the steps and their results without importing them; each resolves when used."""
    import subprocess
    import sys

    code = ("import sys, sealift; heavy = [m for m in ('bentoml', 'torch', 'transformers') if m in sys.modules]; "
            "print(heavy)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
    for name in sealift.__all__:
        assert getattr(sealift, name) is not None, name
    with pytest.raises(AttributeError):
        sealift.no_such_step  # noqa: B018
    assert sealift.install_bundle.__module__ == "sealift.host.install"
    assert issubclass(sealift.UserError, sealift.SealiftError)


def test_the_readme_python_example_runs(tiny_llama: Path, tmp_path: Path) -> None:
    """README's "Use it from Python" block, as written, on the tiny model and a folder for the medium."""
    import re
    import subprocess
    import sys

    readme = (PACKAGE.parent.parent / "README.md").read_text()
    section = readme.split("## Use it from Python", 1)[1]
    code = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    assert len(code.strip().splitlines()) <= 8
    code = code.replace("/models/Qwen2.5-0.5B-Instruct", str(tiny_llama)).replace("/media/usb", str(tmp_path / "usb"))
    env = {**__import__("os").environ, "BENTOML_HOME": str(tmp_path / "bentoml"),
           "SEALIFT_HOME": str(tmp_path / "sealift"), "BENTOML_DO_NOT_TRACK": "True"}
    p = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stderr[-3000:]
    assert p.stdout.strip().splitlines()[-1] == "present"  # the same store: the bento it built is already there
    assert list((tmp_path / "usb").glob("qwen-*/SHA256SUMS"))


def test_a_bento_needs_only_what_its_service_runs() -> None:
    """The package's face names every step under TYPE_CHECKING; a bento's requirements must not follow those
    (a served bento needs bentoml, pydantic, starlette, torch, transformers, not export's uv or pip)."""
    import shutil
    import tempfile

    from sealift.core.codescan import third_party_modules

    with tempfile.TemporaryDirectory() as d:
        shutil.copy(PACKAGE / "bento" / "recipe" / "service.py", Path(d) / "service.py")
        shutil.copytree(PACKAGE, Path(d) / "sealift", ignore=shutil.ignore_patterns("__pycache__"))
        assert third_party_modules(Path(d), "service.py", "sealift") == \
            {"bentoml", "pydantic", "starlette", "torch", "transformers", "xgrammar"}
