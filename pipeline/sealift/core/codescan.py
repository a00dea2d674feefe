"""Python code read with `ast`, never run: the one import walker sealift has.

    iter_imports(tree)                   every import statement, with its level, names and whether optional
                                         (in the body of a try whose handler catches ImportError)
    scan_code(root, auto_map_modules)    a model's own code: the closure of local modules, what is missing,
                                         and the third-party packages it imports
    third_party_modules(root, entry, package)  what a bento's service.py and the package it ships import

Inspection uses scan_code on a model directory; build uses third_party_modules
to find the distributions a bento needs.
"""

from __future__ import annotations

import ast
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = [
    "CodeScan",
    "ImportRef",
    "absolute_names",
    "auto_map_modules",
    "auto_map_refs",
    "iter_imports",
    "scan_code",
    "third_party_modules",
]


@dataclass(frozen=True)
class ImportRef:
    """One import statement: `import a.b, c` (names = the modules) or `from ..m import x, y` (level 2, module m)."""

    is_from: bool
    module: str | None  # `from` imports: the module after the dots (None for `from . import x`)
    names: tuple[str, ...]
    level: int  # leading dots; 0 = absolute
    optional: bool  # guarded: the code runs on without it (see _guarded)


def _type_checking_only(tree: ast.AST) -> set[int]:
    """ids of the nodes under `if TYPE_CHECKING:` (imports for annotations: they never run)."""
    skip: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and ast.unparse(node.test).split(".")[-1] == "TYPE_CHECKING":
            for child in node.body:
                skip.update(id(n) for n in ast.walk(child))
    return skip


#: The exceptions whose handler makes an import optional: `except ImportError:` means the code runs without it.
IMPORT_ERRORS = frozenset({"ImportError", "ModuleNotFoundError"})

#: Where an import inside them runs later, not under the try around them.
_SCOPES = (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)


def _catches_import_error(handler: ast.ExceptHandler) -> bool:
    """`except ImportError:`, `except (ModuleNotFoundError, OSError) as e:`, `except builtins.ImportError:`."""
    kinds = handler.type.elts if isinstance(handler.type, ast.Tuple) else [handler.type]
    return any(isinstance(k, (ast.Name, ast.Attribute)) and ast.unparse(k).split(".")[-1] in IMPORT_ERRORS
               for k in kinds if k is not None)


def _suppresses_import_error(node: ast.With) -> bool:
    """`with contextlib.suppress(ImportError):` (or `suppress(...)` imported by name)."""
    for item in node.items:
        call = item.context_expr
        if isinstance(call, ast.Call) and ast.unparse(call.func).split(".")[-1] == "suppress" and any(
                ast.unparse(a).split(".")[-1] in IMPORT_ERRORS for a in call.args):
            return True
    return False


def _guarded(node: ast.AST, parents: dict[ast.AST, ast.AST]) -> bool:
    """Whether the import `node` is optional: in the `try:` body of a try with an ImportError (or
    ModuleNotFoundError) handler, or under `with suppress(ImportError)`, in the same scope.

    An import in an `except`, `else` or `finally` block, or in a try that catches only other errors,
    is required: a fallback import (`except ImportError: import simplejson as json`) must be there.
    """
    child = node
    while child in parents:
        parent = parents[child]
        if isinstance(parent, _SCOPES):
            return False  # runs when called, not under the try that holds the definition
        if isinstance(parent, ast.Try) or type(parent).__name__ == "TryStar":
            if child in parent.body and any(_catches_import_error(h) for h in parent.handlers):
                return True
        elif isinstance(parent, (ast.With, ast.AsyncWith)) and child in parent.body and _suppresses_import_error(parent):
            return True
        child = parent
    return False


def iter_imports(tree: ast.AST) -> Iterator[ImportRef]:
    """Every import statement that can run, anywhere in tree (inside functions too), in ast.walk order;
    not those under `if TYPE_CHECKING:`."""
    parents = {child: node for node in ast.walk(tree) for child in ast.iter_child_nodes(node)}
    skip = _type_checking_only(tree)
    for node in ast.walk(tree):
        if id(node) in skip:
            continue
        if isinstance(node, ast.Import):
            yield ImportRef(False, None, tuple(a.name for a in node.names), 0, _guarded(node, parents))
        elif isinstance(node, ast.ImportFrom):
            yield ImportRef(True, node.module, tuple(a.name for a in node.names), node.level, _guarded(node, parents))


def absolute_names(ref: ImportRef, package: str) -> set[str]:
    """The absolute module names an import may load, relative ones resolved from `package`.

    `from X import y` yields X and X.y (y may be a submodule); `*` is left out.
    """
    if not ref.is_from:
        return set(ref.names)
    if ref.level:
        parts = package.split(".") if package else []
        parts = parts[: len(parts) - (ref.level - 1)] if ref.level > 1 else parts
        base = ".".join([*parts, ref.module] if ref.module else parts)
    else:
        base = ref.module or ""
    if not base:
        return set()
    return {base, *(f"{base}.{name}" for name in ref.names if name != "*")}


def auto_map_refs(auto_map: Any) -> list[str]:
    """Every class reference string in an `auto_map`, nested lists and dicts flattened (nulls dropped)."""
    if isinstance(auto_map, str):
        return [auto_map]
    if isinstance(auto_map, (list, tuple)):
        return [ref for v in auto_map for ref in auto_map_refs(v)]
    if isinstance(auto_map, dict):
        return [ref for v in auto_map.values() for ref in auto_map_refs(v)]
    return []


def auto_map_modules(auto_map: Any) -> list[tuple[str, str | None]]:
    """(module, repo or None) for every class reference in an `auto_map`.

    Values look like "modeling_x.XForCausalLM", "org/repo--modeling_x.X", or a
    list of those (tokenizers: [slow, fast], either may be null).
    """
    out: list[tuple[str, str | None]] = []
    for ref in auto_map_refs(auto_map):
        repo, _, rest = ref.rpartition("--")
        module = rest.rsplit(".", 1)[0] if "." in rest else rest
        item = (module, repo or None)
        if module and item not in out:
            out.append(item)
    return out


def _module_file(root: Path, base: Path, dotted: str) -> Path | None:
    """The file for a dotted module relative to base: base/a/b.py or base/a/b/__init__.py (None if neither)."""
    stem = base.joinpath(*dotted.split("."))
    for cand in (stem.with_name(stem.name + ".py"), stem / "__init__.py"):
        if cand.is_file():
            return cand
    return None


@dataclass
class CodeScan:
    files: list[str] = field(default_factory=list)  # relative paths, the closure from auto_map
    missing: list[str] = field(default_factory=list)  # "what: why" problems
    external: set[str] = field(default_factory=set)  # top-level packages imported, except optional imports


def scan_code(root: Path, modules: list[tuple[str, str | None]]) -> CodeScan:
    """Follow auto_map modules and every local module they import (relative, or absolute same-dir)."""
    scan = CodeScan()
    seen: set[Path] = set()
    queue: list[Path] = []
    for module, repo in modules:
        f = _module_file(root, root, module)
        if f is None:
            where = f" (auto_map points at {repo})" if repo else " (named in auto_map)"
            scan.missing.append(f"{module.replace('.', '/')}.py missing{where}")
        else:
            queue.append(f)
    while queue:
        f = queue.pop()
        if f in seen:
            continue
        seen.add(f)
        rel = f.relative_to(root).as_posix()
        scan.files.append(rel)
        try:
            tree = ast.parse(f.read_bytes(), filename=rel)
        except (SyntaxError, ValueError) as exc:
            scan.missing.append(f"{rel} does not parse ({exc.__class__.__name__}: line {getattr(exc, 'lineno', '?')})")
            continue
        for ref in iter_imports(tree):
            if ref.level:
                base = f.parent
                for _ in range(ref.level - 1):
                    base = base.parent
                dots = "." * ref.level
                if ref.module:
                    targets = [(base, ref.module, dots + ref.module)]
                else:
                    targets = [(base, name, dots + name) for name in ref.names]
                for b, dotted, written in targets:
                    mf = _module_file(root, b, dotted)
                    if mf is None and not ref.module:
                        continue  # `from . import name` may name an attribute of a package
                    if mf is None:
                        scan.missing.append(f"{dotted.replace('.', '/')}.py missing (imported by {rel} as {written})")
                    elif root in mf.parents or mf.parent == root:
                        queue.append(mf)
                continue
            for dotted in ([ref.module or ""] if ref.is_from else list(ref.names)):
                top = dotted.split(".")[0]
                if not top:
                    continue
                local = _module_file(root, f.parent, dotted) or _module_file(root, f.parent, top)
                if local is not None:
                    queue.append(local)
                elif not ref.optional and top not in sys.stdlib_module_names:
                    scan.external.add(top)
    scan.files.sort()
    return scan


def third_party_modules(root: Path, entry: str, package: str) -> set[str]:
    """Top-level names of non-stdlib modules imported from root/entry, followed through root/package/ at any depth."""
    seen: set[Path] = set()
    external: set[str] = set()
    queue = [root / entry]
    while queue:
        path = queue.pop()
        if path in seen or not path.is_file():
            continue
        seen.add(path)
        here = ".".join(path.relative_to(root).parent.parts)  # where its relative imports start
        tree = ast.parse(path.read_text(), filename=str(path))
        for ref in iter_imports(tree):
            for module in absolute_names(ref, here):
                top = module.split(".")[0]
                if top == package:
                    queue.extend(_package_files(module, root))
                elif top and top not in sys.stdlib_module_names and top != "__future__":
                    external.add(top)
    return external


def _package_files(module: str, root: Path) -> list[Path]:
    """The files Python runs to import `module` from root: each package's __init__ and the module."""
    parts = module.split(".")
    files = []
    for i in range(1, len(parts) + 1):
        base = root.joinpath(*parts[:i])
        files += [base / "__init__.py", base.with_suffix(".py")]
    return [f for f in files if f.is_file()]
