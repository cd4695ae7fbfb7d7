"""The demo fleet: a throwaway copy of a small sample project, the scripted model server started in
this process, and five agents whose scenarios show every state. No API key, no network."""

from __future__ import annotations

import shutil
import subprocess
import tempfile
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from mc.config import AgentConfig, Config

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
        task="Add a slugify helper to app/text.py with tests, and mention it in the README.",
        model="demo-refactor",
        policy="commands",
    ),
    AgentConfig(
        name="demo-flaky",
        task="Rename shout() to exclaim() everywhere.",
        model="demo-flaky",
        policy="writes",
    ),
    AgentConfig(
        name="demo-docs",
        task="Write docs/usage.md explaining how to use the text helpers.",
        model="demo-docs",
        policy="commands",
    ),
    AgentConfig(
        name="demo-stream",
        task="Print a long listing so that I can see the streaming log.",
        model="demo-stream",
        policy="never",
    ),
]


def make_sample_repo(folder: Path) -> Path:
    """Create the sample project as a git repository with one commit on `main`."""
    repo = folder / "textkit"
    for rel, text in SAMPLE_FILES.items():
        path = repo / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    env_args = ["-c", "user.name=missionctl demo", "-c", "user.email=demo@localhost"]
    subprocess.run(["git", "init", "-q", "-b", "main", str(repo)], check=True)
    subprocess.run(["git", "-C", str(repo), "add", "-A"], check=True)
    subprocess.run(["git", "-C", str(repo), *env_args, "commit", "-q", "-m", "textkit: first version"], check=True)
    return repo


def demo_scenario_path() -> Path:
    return Path(str(resources.files("mc.scripted") / "scenarios" / "demo.toml"))


@dataclass
class Demo:
    """A running demo: its folder, its repository, its model server and its config."""

    folder: Path
    repo: Path
    config: Config
    server: Any = None
    agents: list[AgentConfig] = field(default_factory=list)

    def stop(self, remove: bool = True) -> None:
        if self.server is not None:
            self.server.stop()
            self.server = None
        if remove:
            shutil.rmtree(self.folder, ignore_errors=True)


def start_demo(folder: Path | None = None, *, token_rate: float | None = None) -> Demo:
    """Make the sample repository, start the scripted server in a thread, and build the fleet's config."""
    from mc.scripted import serve_in_thread

    base = Path(folder) if folder else Path(tempfile.mkdtemp(prefix="missionctl-demo-"))
    base.mkdir(parents=True, exist_ok=True)
    repo = make_sample_repo(base)
    kwargs: dict[str, Any] = {}
    if token_rate is not None:
        kwargs["tokens_per_second"] = token_rate
    server = serve_in_thread(demo_scenario_path(), **kwargs)
    cfg = Config()
    cfg.repo.path = str(repo)
    cfg.repo.worktree_dir = str(base / "worktrees")
    cfg.model.base_url = server.base_url
    cfg.model.api_key_env = ""
    cfg.model.model = "demo"
    cfg.model.max_retries = 2
    cfg.model.retry_backoff = 0.5
    cfg.model.timeout = 20.0
    cfg.policy.allow_commands = ["python -m unittest", "ls", "cat", "seq"]
    cfg.agents = [AgentConfig(**vars(a)) for a in DEMO_AGENTS]
    return Demo(folder=base, repo=repo, config=cfg, server=server, agents=cfg.agents)
