"""The one-way layering: the headless core imports no Textual, and lower layers never import higher ones."""

import ast
from pathlib import Path

MC = Path(__file__).resolve().parent.parent / "mc"

# module prefix → modules it must not import
FORBIDDEN = {
    # the client speaks to a fleet over its socket: it never holds one itself
    "mc.client": ("textual", "mc.tui", "mc.cli", "mc.server", "mc.fleet", "mc.agents", "mc.tools", "mc.git"),
    "mc.server": ("textual", "mc.tui", "mc.cli", "mc.client", "mc.remote"),
    # a fleet elsewhere, reached through ssh: a client, like mc.client
    "mc.remote": ("textual", "mc.tui", "mc.cli", "mc.server", "mc.fleet", "mc.agents", "mc.tools", "mc.git"),
    "mc.snapshot": ("textual", "mc.tui", "mc.cli", "mc.fleet", "mc.server", "mc.client"),
    "mc.fleet": ("textual", "mc.tui", "mc.cli", "mc.server", "mc.client"),
    "mc.agents": ("textual", "mc.tui", "mc.cli", "mc.fleet"),
    "mc.tools": ("textual", "mc.tui", "mc.cli", "mc.fleet", "mc.agents"),
    "mc.checks": ("textual", "mc.tui", "mc.cli", "mc.fleet", "mc.agents", "mc.server", "mc.client"),
    "mc.git": ("textual", "mc.tui", "mc.cli", "mc.fleet", "mc.agents", "mc.tools"),
    "mc.watch": ("textual", "mc.tui", "mc.cli", "mc.fleet", "mc.agents", "mc.tools"),
    "mc.procs": ("textual", "mc.tui", "mc.cli", "mc.fleet", "mc.agents", "mc.tools", "mc.git"),
    "mc.store": ("textual", "mc.tui", "mc.cli", "mc.fleet", "mc.agents", "mc.tools", "mc.git"),
    "mc.config": ("textual", "mc.tui", "mc.cli", "mc.fleet", "mc.agents", "mc.tools", "mc.git", "mc.store"),
    "mc.review": (
        "textual",
        "mc.tui",
        "mc.cli",
        "mc.fleet",
        "mc.agents",
        "mc.tools",
        "mc.git",
        "mc.server",
        "mc.client",
    ),
    "mc.events": ("textual", "mc.tui", "mc.cli", "mc.fleet", "mc.agents", "mc.tools", "mc.git", "mc.config"),
    "mc.scripted": ("textual", "mc.tui", "mc.cli", "mc.fleet", "mc.agents", "mc.tools", "mc.git"),
    "mc.tui": ("mc.git", "mc.procs", "mc.tools", "mc.watch", "mc.store.Store"),
}


def imports_of(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
    return names


def module_name(path: Path) -> str:
    rel = path.relative_to(MC.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def test_imports_flow_one_way() -> None:
    problems = []
    for path in sorted(MC.rglob("*.py")):
        name = module_name(path)
        for prefix, forbidden in FORBIDDEN.items():
            if name == prefix or name.startswith(prefix + "."):
                for imported in imports_of(path):
                    if any(imported == f or imported.startswith(f + ".") for f in forbidden):
                        problems.append(f"{name} imports {imported}")
    assert problems == []


def test_core_runs_without_textual() -> None:
    import subprocess
    import sys

    code = (
        "import sys; sys.modules['textual'] = None\n"
        "import mc.fleet, mc.cli, mc.agents.builtin, mc.scripted\n"
        "print('ok')"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=MC.parent)
    assert out.stdout.strip() == "ok", out.stderr
