"""Checks: 16 agents' checks asked for at once, on this 2-core machine — how long until every result is in, what
it costs in CPU (the fleet's process, and the check processes it started), and how the fleet's event loop
answers meanwhile (the delay of a 10 ms timer on the loop, which is what the TUI's frames and keys wait on).

    python bench/checks.py [--agents 16] [--modules 24] [--tests 6] [--parallel 0,16]

The repository is made here: a package of `--modules` modules (each imports the one before it, so the import
graph has depth) and one test file per module with `--tests` tests that do a little real work. Every agent
(the builtin runner against the scripted model server, which runs in a process of its own) changes one
module, so that its check selects the test files that import it (through grimp's import graph) and runs real
pytest on them in its worktree, under [tools] sandbox = "auto" as the agent's commands run. Once all agents
are idle, `run_checks` is called for all of them in the same instant; the run ends when the last
CheckFinished arrives. It is repeated for each value of `--parallel` ([checks] parallel; 0 is the default,
half the cores).
"""

from __future__ import annotations

import argparse
import asyncio
import resource
import statistics
import sys
import time
from pathlib import Path
from typing import Any

from harness import Server, git, machine, percentiles, remove, temp_dir

from mc import events as ev
from mc.checks import default_parallel
from mc.config import AgentConfig, ChecksConfig, Config
from mc.fleet import Fleet


def build(root: Path, modules: int, tests: int) -> Path:
    root.mkdir(parents=True)
    git(root, "init", "-q", "-b", "main")
    (root / "app").mkdir()
    (root / "tests").mkdir()
    (root / "app" / "__init__.py").write_text("")
    for i in range(modules):
        base = f"from app.m{i - 1} import value as before\n" if i else "def before():\n    return 0\n"
        (root / "app" / f"m{i}.py").write_text(f"{base}\n\ndef value():\n    return before() + {i}\n")
        body = "".join(
            f"\n\ndef test_{j}():\n    assert sum(k * k for k in range(20000)) > 0 and value() == {sum(range(i + 1))}\n"
            for j in range(tests)
        )
        (root / "tests" / f"test_m{i}.py").write_text(f"from app.m{i} import value\n{body}")
    (root / ".gitignore").write_text("__pycache__/\n")
    git(root, "add", "-A")
    git(root, "commit", "-q", "-m", "initial")
    return root


class Ticker:
    """A 10 ms timer on the loop: how late each tick comes (ms)."""

    def __init__(self, period: float = 0.01) -> None:
        self.period = period
        self.late: list[float] = []
        self.when: list[float] = []
        self.task: asyncio.Task[None] | None = None

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            due = loop.time() + self.period
            await asyncio.sleep(self.period)
            self.late.append((loop.time() - due) * 1000)
            self.when.append(loop.time())

    def start(self) -> None:
        self.late = []
        self.when = []
        self.task = asyncio.get_running_loop().create_task(self._run())

    async def stop(self) -> list[float]:
        if self.task is not None:
            self.task.cancel()
            try:
                await self.task
            except asyncio.CancelledError:
                pass
        return self.late


def cpu() -> tuple[float, float]:
    me = resource.getrusage(resource.RUSAGE_SELF)
    kids = resource.getrusage(resource.RUSAGE_CHILDREN)
    return me.ru_utime + me.ru_stime, kids.ru_utime + kids.ru_stime


async def one_round(folder: Path, args: argparse.Namespace, parallel: int) -> dict[str, Any]:
    repo = build(folder / "repo", args.modules, args.tests)
    names = [f"a{i:02d}" for i in range(args.agents)]
    scenario = {
        "agents": [
            {
                "name": n,
                "turns": [
                    {
                        "say": "Changing one module.",
                        "tool": "write_file",
                        "args": {
                            "path": f"app/m{(i * 7) % args.modules}.py",
                            "content": (repo / "app" / f"m{(i * 7) % args.modules}.py").read_text() + f"# {n}\n",
                        },
                    },
                    {"say": "Done."},
                ],
            }
            for i, n in enumerate(names)
        ]
    }
    server = Server(scenario, folder)
    try:
        cfg = Config()
        cfg.repo.path = str(repo)
        cfg.repo.worktree_dir = str(folder / "worktrees")
        cfg.model.base_url = server.base_url
        cfg.model.api_key_env = ""
        cfg.checks = ChecksConfig(test=f"{sys.executable} -m pytest -q", on="manual", parallel=parallel)
        cfg.agents = [AgentConfig(name=n, task="change a module", model=n, policy="never") for n in names]
        fleet = Fleet(cfg)
        await fleet.open()
        try:
            await fleet.spawn_configured()
            if not await fleet.wait_settled(300):
                raise SystemExit("the agents did not finish their turns")
            await fleet.refresh_diffs()
            started: dict[str, float] = {}
            finished: dict[str, float] = {}

            def listen(event: ev.Event) -> None:
                if isinstance(event, ev.CheckStarted):
                    started[event.agent] = time.perf_counter()
                elif isinstance(event, ev.CheckFinished):
                    finished[event.agent] = time.perf_counter()

            fleet.add_listener(listen)
            ticker = Ticker()
            idle_ticker = Ticker()
            idle_ticker.start()
            await asyncio.sleep(1.0)
            idle_lag = await idle_ticker.stop()
            cpu0 = cpu()
            ticker.start()
            t0 = time.perf_counter()
            for n in names:
                await fleet.run_checks(n)
            for n in names:
                await fleet.wait_checks(n)
            wall = time.perf_counter() - t0
            lag = await ticker.stop()
            worst = max(range(len(lag)), key=lag.__getitem__) if lag else 0
            worst_at = ticker.when[worst] - ticker.when[0] if lag else 0.0
            cpu1 = cpu()
            checks = [fleet.get(n).check for n in names]
            bad = [c for c in checks if c.state != "passed"]
            if bad:
                raise SystemExit(f"a check did not pass: {bad[0]}")
            return {
                "parallel": fleet.checks.parallel,
                "peak": fleet.checks.peak,
                "wall": wall,
                "fleet_cpu": cpu1[0] - cpu0[0],
                "child_cpu": cpu1[1] - cpu0[1],
                "durations": [c.duration * 1000 for c in checks],
                "waits": [(started[n] - t0) * 1000 for n in names],
                "lag": lag,
                "worst_at": worst_at,
                "idle_lag": idle_lag,
                "tests": statistics.median(c.total for c in checks),
                "files": statistics.median(len(c.selected) for c in checks),
                "engine": checks[0].why,
            }
        finally:
            await fleet.close()
    finally:
        server.stop()


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--agents", type=int, default=16)
    parser.add_argument("--modules", type=int, default=24)
    parser.add_argument("--tests", type=int, default=6)
    parser.add_argument("--parallel", default="0,16", help="comma-separated [checks] parallel values")
    args = parser.parse_args()
    print(machine())
    print(
        f"{args.agents} agents, a package of {args.modules} modules with one test file of {args.tests} tests each; "
        f"parallel 0 = {default_parallel()} here"
    )
    for value in [int(v) for v in args.parallel.split(",")]:
        folder = temp_dir("mc-bench-checks-")
        try:
            r = await one_round(folder, args, value)
        finally:
            remove(folder)
        cores = r["wall"] and (r["fleet_cpu"] + r["child_cpu"]) / r["wall"]
        print(f"\n[checks] parallel = {value} (runs {r['parallel']} at once; at most {r['peak']} did)")
        print(f"  each check (median): {r['files']:.0f} test files, {r['tests']:.0f} tests; the first: {r['engine']}")
        print(f"  all {args.agents} results in   {r['wall']:.1f} s")
        print(f"  one check's run      {percentiles(r['durations'])}")
        print(f"  asked → started      {percentiles(r['waits'])}")
        print(
            f"  CPU                  fleet process {r['fleet_cpu']:.1f} s, check processes {r['child_cpu']:.1f} s "
            f"({cores:.2f} cores busy on average)"
        )
        print(f"  10 ms timer, late by {percentiles(r['lag'])}; the latest at +{r['worst_at']:.1f} s")
        print(f"  (idle, before)       {percentiles(r['idle_lag'])}")


if __name__ == "__main__":
    asyncio.run(main())
