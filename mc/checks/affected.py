"""Which tests of a Python repository a diff touches, from its import graph.

A test file is affected when it imports a changed module, directly or through other modules of the repository,
or is itself changed; a changed conftest.py (or one that imports a changed module) affects the tests under its
folder; a changed package `__init__.py` affects whatever imports anything of that package; a changed
pyproject.toml, setup.cfg, tox.ini, pytest.ini or requirements file affects everything.

The graph of the repository's packages is grimp's (the graph under import-linter, parsed in Rust). grimp only
models packages, so files in folders without `__init__.py` (top-level modules, a `tests/` folder run by pytest's
rootdir import mode, which also finds the sibling modules they import) and the importers of deleted modules
(which grimp drops) are read with Python's ast; where grimp is missing or cannot build the graph (a syntax
error in one file stops it), ast reads every file.

This module imports only the standard library (and grimp), so that it can run as a script in a process of its
own — `python -I -P affected.py < request.json` — off the fleet's event loop and away from its GIL, with the
worktree on that process's search path and nowhere else. The fleet runs it that way (mc.checks.plan); tests
call `select_tests` directly.
"""

from __future__ import annotations

import ast
import importlib.machinery
import json
import os
import sys
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

#: Folders never read: version control, caches, virtual environments and build output.
SKIP_DIRS = frozenset(
    {
        "__pycache__",
        "node_modules",
        "site-packages",
        "build",
        "dist",
        "venv",
        "env",
        "htmlcov",
        "__pypackages__",
    }
)
#: Files whose change can change any test's outcome: the full test command runs.
CONFIG_FILES = frozenset(
    {
        "pyproject.toml",
        "setup.cfg",
        "setup.py",
        "tox.ini",
        "pytest.ini",
        "noxfile.py",
        "Pipfile",
        "Pipfile.lock",
        "poetry.lock",
        "uv.lock",
        "pdm.lock",
    }
)
MAX_FILES = 50_000


def is_test_file(name: str) -> bool:
    """pytest's default test file names: test_*.py and *_test.py."""
    return name.endswith(".py") and (name.startswith("test_") or name.endswith("_test.py"))


def _is_config(path: str) -> bool:
    name = path.rsplit("/", 1)[-1]
    return name in CONFIG_FILES or (name.startswith("requirements") and name.endswith((".txt", ".in")))


@dataclass
class Project:
    """The Python files of a worktree and the module name each one is imported as."""

    root: Path
    roots: list[Path]
    files: dict[str, str | None] = field(default_factory=dict)
    """Path (relative, '/') → module name (None where a part of the path is no identifier)."""
    modules: dict[str, str] = field(default_factory=dict)
    """Module name → path."""
    packages: set[str] = field(default_factory=set)
    """Modules that are packages (an __init__.py)."""
    loose: set[str] = field(default_factory=set)
    """Paths of the files in folders without __init__.py (grimp does not see their sibling imports)."""


def _module_name(rel: str, src: bool) -> str | None:
    parts = rel[:-3].split("/")
    if src and parts[0] == "src":
        parts = parts[1:]
    if parts and parts[-1] == "__init__":
        parts = parts[:-1]
    if not parts or not all(p.isidentifier() for p in parts):
        return None
    return ".".join(parts)


def scan(root: Path) -> Project:
    """Every .py file under `root` (skipping hidden folders, caches, virtual environments and build output),
    named as the module it is imported as from `root` or from `root/src` (a src layout)."""
    root = Path(root)
    src = (root / "src").is_dir() and not (root / "src" / "__init__.py").exists()
    project = Project(root=root, roots=[root, root / "src"] if src else [root])
    count = 0
    for folder, dirs, names in os.walk(root):
        here = Path(folder)
        dirs[:] = sorted(
            d
            for d in dirs
            if not d.startswith(".")
            and d not in SKIP_DIRS
            and not d.endswith(".egg-info")
            and not (here / d / "pyvenv.cfg").exists()
        )
        rel_folder = os.path.relpath(folder, root).replace(os.sep, "/")
        prefix = "" if rel_folder == "." else rel_folder + "/"
        package = "__init__.py" in names
        for name in sorted(names):
            if not name.endswith(".py"):
                continue
            rel = prefix + name
            module = _module_name(rel, src)
            project.files[rel] = module
            if module is not None:
                project.modules.setdefault(module, rel)
                if name == "__init__.py":
                    project.packages.add(module)
            if not package:
                project.loose.add(rel)
            count += 1
            if count > MAX_FILES:
                return project
    return project


# --------------------------------------------------------------------------------------------- imports


def _imported_names(tree: ast.AST, module: str, is_package: bool) -> set[str]:
    """The absolute names a module's import statements name (a `from a import b` names a and a.b)."""
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                parts = module.split(".")
                if not is_package:
                    parts = parts[:-1]
                if node.level > 1:
                    parts = parts[: len(parts) - (node.level - 1)] if len(parts) >= node.level - 1 else []
                base = ".".join([*parts, node.module] if node.module else parts)
            else:
                base = node.module or ""
            if not base:
                continue
            names.add(base)
            names.update(f"{base}.{alias.name}" for alias in node.names if alias.name != "*")
    return names


def _resolve(name: str, known: set[str]) -> str | None:
    """The module of the repository that importing `name` reaches (the longest known prefix), or None."""
    while name:
        if name in known:
            return name
        name = name.rpartition(".")[0]
    return None


def ast_edges(project: Project, paths: set[str], known: set[str], notes: list[str]) -> dict[str, set[str]]:
    """module → the modules of the repository it imports, for the files `paths`, read with ast. A file in a
    folder without __init__.py also reaches its sibling modules by their bare name (pytest's rootdir mode)."""
    edges: dict[str, set[str]] = {}
    for rel in sorted(paths):
        module = project.files.get(rel)
        if module is None:
            continue
        try:
            source = (project.root / rel).read_bytes()
            tree = ast.parse(source, filename=rel)
        except (OSError, SyntaxError, ValueError) as exc:
            notes.append(f"{rel} cannot be read ({type(exc).__name__}): its imports are not known")
            continue
        is_package = module in project.packages
        found: set[str] = set()
        folder = module.rpartition(".")[0] if rel in project.loose else ""
        for name in _imported_names(tree, module, is_package):
            target = _resolve(name, known)
            if target is None and folder:
                target = _resolve(f"{folder}.{name}", known)
            if target is not None and target != module:
                found.add(target)
        edges[module] = found
    return edges


def grimp_edges(project: Project, notes: list[str]) -> dict[str, set[str]] | None:
    """module → the modules it imports, for every package of the repository, from grimp; None where grimp is
    not installed or cannot build the graph (said in `notes`)."""
    try:
        import grimp  # type: ignore[import-untyped]
    except ImportError:
        notes.append("grimp is not installed: the imports are read with Python's ast")
        return None
    tops = sorted({m.split(".")[0] for m in project.modules if "." in m or m in project.packages})
    if not tops:
        return {}
    saved = (list(sys.path), list(sys.meta_path), dict(sys.path_importer_cache))
    # Only the worktree is searched: no installed package (an editable install of this very project, say) can
    # stand in for the worktree's own, and nothing else is imported while the search path is this one.
    sys.path[:] = [str(r) for r in project.roots]
    sys.meta_path[:] = [
        f
        for f in saved[1]
        if f
        in (importlib.machinery.BuiltinImporter, importlib.machinery.FrozenImporter, importlib.machinery.PathFinder)
    ]
    sys.path_importer_cache.clear()
    try:
        graph = grimp.build_graph(*tops, cache_dir=None)
    except Exception as exc:  # a syntax error in one file, a folder grimp cannot take
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        notes.append(f"grimp could not build the import graph ({first}): the imports are read with Python's ast")
        return None
    finally:
        sys.path[:], sys.meta_path[:] = saved[0], saved[1]
        sys.path_importer_cache.clear()
        sys.path_importer_cache.update(saved[2])
    return {m: set(graph.find_modules_directly_imported_by(m)) for m in graph.modules}


def _deleted_importers(project: Project, deleted: dict[str, str], known: set[str]) -> dict[str, set[str]]:
    """module → the deleted modules it still imports (grimp drops imports of modules that do not exist)."""
    edges: dict[str, set[str]] = {}
    words = {name.rsplit(".", 1)[-1].encode() for name in deleted}
    for rel, module in project.files.items():
        if module is None:
            continue
        try:
            source = (project.root / rel).read_bytes()
        except OSError:
            continue
        if not any(w in source for w in words):
            continue
        try:
            tree = ast.parse(source, filename=rel)
        except (SyntaxError, ValueError):
            continue
        folder = module.rpartition(".")[0] if rel in project.loose else ""
        for name in _imported_names(tree, module, module in project.packages):
            for candidate in (name, f"{folder}.{name}" if folder else ""):
                target = _resolve(candidate, set(deleted)) if candidate else None
                if target is not None:
                    edges.setdefault(module, set()).add(target)
    return edges


# --------------------------------------------------------------------------------------------- selection


@dataclass
class Selection:
    """What a diff touches: the test files to run and why, or the reason to run everything."""

    tests: list[tuple[str, str]] = field(default_factory=list)
    """(test file, why) sorted by path: why is "changed", or the chain of imports down to the changed file
    ("app/api.py ← app/text.py": the test imports app/api.py, which imports the changed app/text.py)."""
    full: str = ""
    """Why every test must run ("pyproject.toml changed"); empty when the selection holds."""
    untouched: list[str] = field(default_factory=list)
    """Changed files that no test imports (documentation, data, scripts)."""
    notes: list[str] = field(default_factory=list)
    engine: str = ""
    """What built the graph: "grimp X.Y" or "ast"."""

    def lines(self) -> list[str]:
        """One line per selected test: "tests/test_text.py ← app/text.py", "tests/test_new.py (changed)"."""
        return [f"{path} (changed)" if why == "changed" else f"{path} ← {why}" for path, why in self.tests]

    def to_dict(self) -> dict[str, Any]:
        return {
            "tests": [list(t) for t in self.tests],
            "full": self.full,
            "untouched": self.untouched,
            "notes": self.notes,
            "engine": self.engine,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Selection:
        return cls(
            tests=[(str(p), str(w)) for p, w in data.get("tests", [])],
            full=str(data.get("full", "")),
            untouched=[str(x) for x in data.get("untouched", [])],
            notes=[str(x) for x in data.get("notes", [])],
            engine=str(data.get("engine", "")),
        )


def select_tests(
    root: Path | str, changed: list[str], deleted: list[str] | None = None, *, use_grimp: bool = True
) -> Selection:
    """The tests under `root` that the changed files touch. `changed` holds the paths (relative, '/') that are
    new or modified, `deleted` those that are gone (the old side of a rename too)."""
    deleted = list(deleted or [])
    sel = Selection()
    for path in [*changed, *deleted]:
        if _is_config(path):
            sel.full = f"{path} changed"
            return sel
    project = scan(Path(root))
    known = set(project.modules)
    gone: dict[str, str] = {}  # deleted module → its path
    for rel in deleted:
        name = _module_name(rel, len(project.roots) > 1) if rel.endswith(".py") else None
        if name is not None and name not in known:
            gone[name] = rel
    edges = grimp_edges(project, sel.notes) if use_grimp else None
    if edges is None:
        sel.engine = "ast"
        edges = ast_edges(project, set(project.files), known, sel.notes)
    else:
        import grimp

        sel.engine = f"grimp {getattr(grimp, '__version__', '')}".strip()
        for module, targets in ast_edges(project, project.loose, known, sel.notes).items():
            edges.setdefault(module, set()).update(targets)
    if gone:
        for module, targets in _deleted_importers(project, gone, known).items():
            edges.setdefault(module, set()).update(targets)
    nodes = known | set(gone)
    importers: dict[str, set[str]] = {}
    for module, targets in edges.items():
        for target in targets:
            if target in nodes:
                importers.setdefault(target, set()).add(module)
    children: dict[str, list[str]] = {}
    for module in nodes:
        parts = module.split(".")
        for i in range(1, len(parts)):
            children.setdefault(".".join(parts[:i]), []).append(module)

    def path_of(module: str) -> str:
        return project.modules.get(module) or gone.get(module, module)

    def importers_of(module: str) -> set[str]:
        found = set(importers.get(module, ()))
        if module in project.packages or module in gone:  # importing a.b runs a/__init__.py first
            for child in children.get(module, ()):
                found |= importers.get(child, set())
        return found

    # Breadth first from every changed module: the first way a module is reached is its shortest chain.
    chains: dict[str, list[str]] = {}  # module → paths from its own down to the changed file
    queue: deque[str] = deque()
    selected: dict[str, list[str]] = {}  # test file → [test, …, changed file]
    for rel in changed:
        if rel in project.files and is_test_file(rel.rsplit("/", 1)[-1]) and (project.root / rel).is_file():
            selected[rel] = [rel]
        module = project.files.get(rel)
        if module is not None and module not in chains:
            chains[module] = [rel]
            queue.append(module)
    for module, rel in gone.items():
        chains[module] = [rel]
        queue.append(module)
    while queue:
        module = queue.popleft()
        for importer in sorted(importers_of(module)):
            if importer not in chains:
                chains[importer] = [path_of(importer), *chains[module]]
                queue.append(importer)
    test_files = sorted(rel for rel in project.files if is_test_file(rel.rsplit("/", 1)[-1]))
    ordered = sorted(chains.values(), key=lambda c: (len(c), c))
    for chain in ordered:  # the tests that import a changed module themselves first, then through a conftest.py
        rel = chain[0]
        if is_test_file(rel.rsplit("/", 1)[-1]) and rel not in selected and (project.root / rel).is_file():
            selected[rel] = chain
    for chain in ordered:
        rel = chain[0]
        name = rel.rsplit("/", 1)[-1]
        if name == "conftest.py" and (project.root / rel).is_file():
            folder = rel[: -len(name)]
            for test in test_files:
                if test.startswith(folder) and test not in selected:
                    selected[test] = [test, *chain]
    reaching = {chain[-1] for chain in selected.values()}
    sel.untouched = [rel for rel in [*changed, *deleted] if rel not in reaching]
    sel.tests = [(test, "changed" if len(c) == 1 else " ← ".join(c[1:])) for test, c in sorted(selected.items())]
    return sel


def main() -> int:
    """Read {"root", "changed", "deleted"} as JSON on stdin; print the Selection as JSON on stdout."""
    request = json.load(sys.stdin)
    sel = select_tests(request["root"], list(request.get("changed", [])), list(request.get("deleted", [])))
    json.dump(sel.to_dict(), sys.stdout)
    return 0


if __name__ == "__main__":
    sys.exit(main())
