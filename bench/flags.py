"""Risk flags: the scan of a diff of ~5,000 lines (target: under 200 ms), cold and incremental, and how long
the event loop stalls while it runs in its thread; then the same change in a real Fleet, from the write to
FlagsChanged.

    python bench/flags.py [--lines 5000] [--files 40] [--runs 30] [--rounds 8]

The repository is made here: `--files` Python modules of generated code, committed; the change rewrites every
other line of each module, adds new modules, a GitHub workflow, a package-lock.json and an AWS-style key, so
that the diff (from `compute_diff`, as the fleet makes it) has about `--lines` lines with context, removals and
additions. "cold" is a new scanner each run (every file scanned); "one file changed" edits one module between
two scans of the same scanner (the incremental case, the usual one while an agent works); "unchanged" scans
the same diff again. The loop stall is the longest gap of a 1 ms asyncio ticker during a cold scan run in a
thread (the scan holds the GIL), beside the same ticker with no scan.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import statistics
import time
from pathlib import Path

from harness import build_repo, git, machine, remove, temp_dir

from mc import events as ev
from mc.config import AgentConfig, Config
from mc.flags import FlagScanner
from mc.fleet import Fleet
from mc.git import compute_diff

KEY = "AKIAZ7QX3V5N2LKJ4WPR"  # the shape of an AWS access key id; not a real one
WORKFLOW = "name: ci\non: [push]\njobs:\n  test:\n    runs-on: ubuntu-latest\n    steps:\n      - run: make test\n"


def ms(samples: list[float]) -> str:
    """p50/p95/max of millisecond samples, with one decimal (the warm scans take about a millisecond)."""
    if not samples:
        return "no samples"
    q = statistics.quantiles(samples, n=20, method="inclusive") if len(samples) >= 2 else [samples[0]] * 19
    return f"p50 {statistics.median(samples):.1f} ms  p95 {q[18]:.1f} ms  max {max(samples):.1f} ms  (n={len(samples)})"


def code_line(rng: random.Random, i: int) -> str:
    def word() -> str:
        return "".join(rng.choices("abcdefghijklmnopqrstuvwxyz", k=rng.randrange(3, 10)))

    return rng.choice(
        [
            f"    {word()}_{i} = {word()}({word()}, '{word()} {word()}', {i})",
            f"def {word()}_{i}(self, {word()}: int = {i}) -> str:",
            f'        return self.{word()}[{word()!r}] + "{word()}"',
            f"# {word()} {word()} {word()} {word()} {word()} {word()}",
            f"    config = {{'{word()}': \"{word()}-{word()}-{i}\", 'url': 'https://{word()}.example.com/{word()}'}}",
            f"    if {word()} == {i}: {word()}.append({word()})",
            f'    logger.info("{word()} %s {word()}", {word()}_{i})',
        ]
    )


def module(rng: random.Random, n: int, seed: int) -> str:
    local = random.Random(seed)
    return "".join(code_line(local, k) + "\n" for k in range(n))


def make_change(root: Path, files: int, per_file: int, *, with_key: bool, variant: int = 0) -> None:
    """Rewrite every other line of each module, add new modules, a workflow, a lock file (and the key)."""
    rng = random.Random(7 + variant)
    for i in range(files):
        path = root / "src" / f"mod{i:03d}.py"
        lines = path.read_text().splitlines(keepends=True)
        for k in range(0, len(lines), 2):
            lines[k] = code_line(rng, k) + "\n"
        path.write_text("".join(lines))
    for i in range(files // 4):
        (root / "src" / f"new{i:03d}.py").write_text(module(rng, per_file, 1000 + i + variant))
    (root / ".github" / "workflows").mkdir(parents=True, exist_ok=True)
    (root / ".github" / "workflows" / "ci.yml").write_text(WORKFLOW)
    lock = ["{", '  "name": "app",', '  "lockfileVersion": 3,', '  "packages": {']
    lock += [f'    "node_modules/pkg{i}": {{"version": "1.{i}.0"}},' for i in range(per_file)]
    (root / "package-lock.json").write_text("\n".join([*lock, "  }", "}"]) + "\n")
    settings = root / "src" / "settings.py"
    settings.write_text(f'import os\n\nAWS_ACCESS_KEY_ID = "{KEY}"\n' if with_key else "import os\n")


def base_repo(d: Path, files: int, per_file: int) -> tuple[Path, str]:
    root = build_repo(d / "repo", 0)
    (root / "src").mkdir()
    rng = random.Random(1)
    for i in range(files):
        (root / "src" / f"mod{i:03d}.py").write_text(module(rng, per_file, i))
    git(root, "add", "-A")
    git(root, "commit", "-q", "-m", "modules")
    return root, git(root, "rev-parse", "HEAD").strip()


def lines_per_module(args: argparse.Namespace) -> int:
    """Lines of each module for a diff of about `--lines` lines: a changed module of n lines gives ~1.6 n lines
    of diff text (half its lines removed and added, with context), a new one and the lock file n + 5 each."""
    return max(10, round(args.lines / (1.6 * args.files + args.files // 4 + 1)))


async def loop_stall(work: object | None) -> float:
    """The longest gap (ms) of a 1 ms ticker while `work` (a blocking callable) runs in a thread, or for 100 ms."""
    gaps: list[float] = []
    done = asyncio.Event()

    async def tick() -> None:
        last = time.perf_counter()
        while not done.is_set():
            await asyncio.sleep(0.001)
            now = time.perf_counter()
            gaps.append((now - last) * 1000)
            last = now

    ticker = asyncio.create_task(tick())
    await asyncio.sleep(0.01)
    gaps.clear()
    if work is None:
        await asyncio.sleep(0.1)
    else:
        await asyncio.to_thread(work)  # type: ignore[arg-type]
    done.set()
    await ticker
    return max(gaps) if gaps else 0.0


async def scans(args: argparse.Namespace, d: Path) -> None:
    per_file = lines_per_module(args)
    root, base = base_repo(d, args.files, per_file)
    make_change(root, args.files, per_file, with_key=True)
    start = time.perf_counter()
    diff = compute_diff(root, base)
    took = (time.perf_counter() - start) * 1000
    lines = diff.text.count("\n")
    added = sum(f.added for f in diff.files)
    removed = sum(f.removed for f in diff.files)
    print(
        f"diff: {lines} lines of text ({len(diff.text) / 1024:.0f} KiB), {len(diff.files)} files, +{added} -{removed};"
        f" compute_diff {took:.0f} ms"
    )
    flags = FlagScanner().scan(diff, root=root)
    print(f"flags: {len(flags)}: " + ", ".join(sorted({f"{f.rule} {f.path}:{f.line}" for f in flags})[:6]) + " …")

    cold = []
    for _ in range(args.runs):
        scanner = FlagScanner()
        start = time.perf_counter()
        scanner.scan(diff, root=root)
        cold.append((time.perf_counter() - start) * 1000)
    print(f"cold scan (every file)          {ms(cold)}")

    scanner = FlagScanner()
    scanner.scan(diff, root=root)
    same = []
    for _ in range(args.runs):
        start = time.perf_counter()
        scanner.scan(diff, root=root)
        same.append((time.perf_counter() - start) * 1000)
    print(f"unchanged diff scanned again    {ms(same)}  (files rescanned: {scanner.rescanned})")

    one, rescanned = [], set()
    target = root / "src" / "mod000.py"
    original = target.read_text()
    for r in range(args.runs):
        target.write_text(original + f"# edit {r}\n")
        changed = compute_diff(root, base)
        start = time.perf_counter()
        scanner.scan(changed, root=root)
        one.append((time.perf_counter() - start) * 1000)
        rescanned.add(scanner.rescanned)
    print(f"one file changed since the last {ms(one)}  (files rescanned: {sorted(rescanned)})")

    idle = [await loop_stall(None) for _ in range(5)]
    busy = [await loop_stall(lambda: FlagScanner().scan(diff, root=root)) for _ in range(10)]
    print(f"event loop, longest 1 ms tick gap: idle {ms(idle)}; during a cold scan {ms(busy)}")


async def fleet_path(args: argparse.Namespace, d: Path) -> None:
    """The same change written into an agent's worktree: write → DiffChanged → FlagsChanged, in a real Fleet."""
    per_file = lines_per_module(args)
    root, _ = base_repo(d / "fleet", args.files, per_file)
    cfg = Config()
    cfg.repo.path = str(root)
    cfg.repo.base = "main"
    cfg.repo.worktree_dir = str(d / "fleet" / "worktrees")
    cfg.agents = [AgentConfig(name="f0", task="wait", runner="command", command="sleep 3600")]
    fleet = Fleet(cfg)
    await fleet.open()
    marks: dict[str, float] = {}
    arrived = asyncio.Event()

    def listen(event: ev.Event) -> None:
        if isinstance(event, ev.DiffChanged):
            marks["diff"] = time.perf_counter()
        elif isinstance(event, ev.FlagsChanged):
            marks["flags"] = time.perf_counter()
            arrived.set()

    fleet.add_listener(listen)
    try:
        await fleet.spawn_configured()
        agent = fleet.get("f0")
        await asyncio.sleep(2)
        worktree = Path(agent.worktree)
        total, after_diff, missed = [], [], 0
        for r in range(args.rounds):
            marks.clear()
            arrived.clear()
            start = time.perf_counter()
            await asyncio.to_thread(make_change, worktree, args.files, per_file, with_key=r % 2 == 0, variant=r)
            try:
                await asyncio.wait_for(arrived.wait(), 30)
            except TimeoutError:
                missed += 1
                continue
            total.append((marks["flags"] - start) * 1000)
            if "diff" in marks:
                after_diff.append((marks["flags"] - marks["diff"]) * 1000)
            await asyncio.sleep(0.5)
        print(f"in a fleet, {args.rounds} rounds of the change (the key there every other round):")
        print(f"  write -> FlagsChanged           {ms(total)}  no event: {missed}")
        print(f"  DiffChanged -> FlagsChanged     {ms(after_diff)}")
        print(f"  flags now: {len(fleet.get('f0').flags)}")
    finally:
        for a in fleet.list():
            await fleet.kill(a.id)
        await fleet.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--lines", type=int, default=5000, help="about how many lines the diff text has")
    parser.add_argument("--files", type=int, default=40, help="modules changed (a quarter as many are added)")
    parser.add_argument("--runs", type=int, default=30, help="scans timed of each kind")
    parser.add_argument("--rounds", type=int, default=8, help="changes written into the fleet's worktree")
    args = parser.parse_args()
    print(machine())
    d = temp_dir("mc-bench-flags-")
    try:
        asyncio.run(scans(args, d))
        asyncio.run(fleet_path(args, d))
    finally:
        remove(d)


if __name__ == "__main__":
    main()
