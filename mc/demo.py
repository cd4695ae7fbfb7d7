"""The demo fleet: a copy of a small sample project, the scripted model server started in this process, and
agents whose scenarios show every state and every part of the review loop (checks that pass, checks that fail and
are fixed after `f`, a flagged diff, a best-of-3 group to pick from). No API key, no network.

A fleet the demo started says so in its state (`[demo] scenario = "demo"`). Whoever opens it again — `missionctl`
in its repository, or `missionctl demo --dir` on its folder — gets the scripted server started again on a fresh
port and the agents pointed at it (`serve_demo`, called by the Fleet when it opens), so it comes back as it left.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mc.config import AgentConfig, ChecksConfig, Config, PriceConfig
from mc.store import STATE_FOLDER, Store, StoreError, demo_scenario

#: The bundled scenario the demo plays (mc/scripted/scenarios/demo.toml); recorded by name in the state.
DEMO_SCENARIO = "demo"
#: The sample repository's folder inside the demo folder.
REPO_NAME = "textkit"

SAMPLE_FILES = {
    "README.md": "# textkit\n\nSmall text helpers used by the demo of missionctl.\n\nRun the tests with "
    "`python -m unittest -q`.\n",
    "app/__init__.py": '"""textkit: small text helpers."""\n',
    "app/text.py": (
        '"""Text helpers."""\n\n\n'
        "def title_case(text: str) -> str:\n"
        '    """Capitalise every word of `text`."""\n'
        '    return " ".join(word.capitalize() for word in text.split())\n\n\n'
        "def shout(text: str) -> str:\n"
        '    return text.upper() + "!"\n'
    ),
    "tests/__init__.py": "",
    "tests/test_text.py": (
        "import unittest\n\n"
        "from app.text import shout, title_case\n\n\n"
        "class TextTest(unittest.TestCase):\n"
        "    def test_title_case(self) -> None:\n"
        '        self.assertEqual(title_case("hello big world"), "Hello Big World")\n\n'
        "    def test_shout(self) -> None:\n"
        '        self.assertEqual(shout("hey"), "HEY!")\n\n\n'
        'if __name__ == "__main__":\n'
        "    unittest.main()\n"
    ),
    ".gitignore": "__pycache__/\n*.pyc\nbuild/\n",
}

DEMO_AGENTS = [
    AgentConfig(
        name="demo-tests",
        task="Run the test suite and tell me whether it passes.",
        model="demo-tests",
        policy="writes",
    ),
    AgentConfig(
        name="demo-refactor",
        task="Add a slugify helper to the text helpers, with tests, and mention it in the README.",
        model="demo-refactor",
        policy="commands",
    ),
    AgentConfig(
        name="demo-flaky",
        task="Make title_case keep acronyms such as NASA as they are.",
        model="demo-flaky",
        policy="writes",
    ),
    AgentConfig(
        name="demo-rename",
        task="Rename shout() to exclaim() everywhere.",
        model="demo-rename",
        policy="never",
    ),
    AgentConfig(
        name="demo-docs",
        task="Write docs/usage.md explaining how to use the text helpers.",
        model="demo-docs",
        policy="commands",
    ),
    AgentConfig(
        name="demo-pick",
        task="Let shout() end in as many exclamation marks as asked (one by default).",
        models=["demo-pick-a", "demo-pick-b", "demo-pick-c"],
        policy="never",
    ),
    AgentConfig(
        name="demo-stream",
        task="Print a long listing so that I can see the streaming log.",
        model="demo-stream",
        policy="never",
    ),
]


class DemoError(Exception):
    """A demo that cannot start or come back, as one line naming the problem and the fix."""


def make_sample_repo(folder: Path, scenario: str | None = None) -> Path:
    """Create the sample project as a git repository with one commit on `main`, at `folder/textkit`; with
    `scenario`, its state says that it is a demo fleet playing that scenario.

    It is built beside its place and renamed into it, so a demo killed halfway leaves no half repository."""
    repo = folder / REPO_NAME
    folder.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=folder, prefix=f".{REPO_NAME}."))
    try:
        for rel, text in SAMPLE_FILES.items():
            path = tmp / rel
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text)
        env_args = ["-c", "user.name=missionctl demo", "-c", "user.email=demo@localhost"]
        git = ["git", "-C", str(tmp)]
        subprocess.run(["git", "init", "-q", "-b", "main", str(tmp)], check=True)
        subprocess.run([*git, "add", "-A"], check=True)
        subprocess.run([*git, *env_args, "commit", "-q", "-m", "textkit: first version"], check=True)
        if scenario:
            Store(tmp / STATE_FOLDER).record_demo(scenario)
        os.rename(tmp, repo)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return repo


def demo_scenario_path(scenario: str = DEMO_SCENARIO) -> Path:
    """The bundled scenario file of that name (DemoError for a name that is not bundled)."""
    from mc.scripted.scenario import SCENARIO_DIR

    path = SCENARIO_DIR / f"{scenario}.toml"
    if not re.fullmatch(r"[A-Za-z0-9_-]+", scenario) or not path.is_file():
        known = ", ".join(sorted(p.stem for p in SCENARIO_DIR.glob("*.toml")))
        raise DemoError(
            f"this demo fleet plays the scenario {scenario!r}, which this missionctl does not have (it has: {known}): "
            "start a new demo with `missionctl demo`"
        )
    return path


def demo_settings(cfg: Config, repo: Path) -> None:
    """Set what a demo fleet's config holds besides its endpoint (in place): worktree folder, model, allowed
    commands, agents."""
    cfg.repo.path = str(repo)
    cfg.repo.worktree_dir = str(repo.parent / "worktrees")
    cfg.model.model = "demo"
    cfg.policy.allow_commands = ["python -m unittest", "ls", "cat", "seq"]
    cfg.agents = [AgentConfig(**vars(a)) for a in DEMO_AGENTS]
    # every agent's work arrives checked: the tests its diff touches, after each turn that changed it
    cfg.checks = ChecksConfig(test="python -m unittest -q", affected="python -m unittest -q {tests}", on="idle")
    # the scripted models at the example config's price, so that the demo shows what a fleet costs
    models = {a.model for a in cfg.agents} | {m for a in cfg.agents for m in a.models} | {cfg.model.model}
    cfg.prices = {m: PriceConfig(input=0.25, output=2.0) for m in sorted(models) if m}


def serve_demo(cfg: Config, scenario: str, repo: Path) -> Any:
    """Start the scripted server of a demo fleet in a thread, on a fresh port, and point `cfg` at it (in place:
    whoever holds the config sees the change). Without a config file of the user's, the rest of the demo's
    settings come back too (worktree folder, allowed commands, agents). Returns the server; stop() ends it."""
    from mc.scripted import serve_in_thread

    path = demo_scenario_path(scenario)
    if not cfg.source:
        demo_settings(cfg, repo)
    server = serve_in_thread(path)
    cfg.model.base_url = server.base_url
    cfg.model.api_key_env = ""
    cfg.model.api = "responses"
    cfg.model.max_retries = 2
    cfg.model.retry_backoff = 0.5
    cfg.model.timeout = 20.0
    return server


def is_demo_repo(repo: Path) -> bool:
    """True when `repo` holds a fleet that `missionctl demo` started."""
    try:
        return demo_scenario(Store(repo / STATE_FOLDER).load_state()) is not None
    except StoreError:
        return False


@dataclass
class Demo:
    """A demo: its folder, its repository and its fleet's config (the Fleet starts the model server when it
    opens). `reopened` when the folder held this demo already: its fleet comes back, nothing is spawned."""

    folder: Path
    repo: Path
    config: Config
    reopened: bool = False
    agents: list[AgentConfig] = field(default_factory=list)

    def stop(self, remove: bool = True) -> None:
        """Remove the demo's folder when `remove` (a throwaway demo); otherwise leave everything."""
        if remove:
            shutil.rmtree(self.folder, ignore_errors=True)


def start_demo(folder: Path | None = None) -> Demo:
    """The demo in `folder` (a new temporary one by default): made there, or opened again when the folder holds
    it already. A folder whose `textkit` is anything else is refused with DemoError; nothing in it is touched."""
    base = Path(folder).expanduser().absolute() if folder else Path(tempfile.mkdtemp(prefix="missionctl-demo-"))
    repo = base / REPO_NAME
    reopened = False
    if repo.exists() or repo.is_symlink():
        if not (repo.is_dir() and is_demo_repo(repo)):
            raise DemoError(
                f"{repo} exists and is not a missionctl demo: pass --dir a new folder (or the folder of an "
                "earlier demo); nothing was changed"
            )
        reopened = True
    elif base.is_file():
        raise DemoError(f"--dir {base}: it is a file: pass a folder (a new one is made)")
    else:
        make_sample_repo(base, DEMO_SCENARIO)
    cfg = Config()
    demo_settings(cfg, repo)
    return Demo(folder=base, repo=repo, config=cfg, reopened=reopened, agents=cfg.agents)
