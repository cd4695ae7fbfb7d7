"""mc.procs against real processes: kill leaves no tagged process, output is read safely."""

from __future__ import annotations

import asyncio
import contextlib
import os
import sys
import uuid
from pathlib import Path

import psutil
import pytest

from mc import procs
from mc.procs import LineSplitter, OutputDecoder, clean_terminal_text

PY = sys.executable


@pytest.fixture(scope="module", autouse=True)
def subreaper() -> None:
    was_on = procs.subreaper_enabled()
    assert procs.enable_subreaper()
    assert procs.enable_subreaper()  # idempotent
    assert procs.subreaper_enabled()
    yield
    if not was_on:
        procs.disable_subreaper()
        assert not procs.subreaper_enabled()


@pytest.fixture
def tag() -> str:
    value = f"test-{uuid.uuid4().hex[:10]}"
    yield value
    procs.kill_tagged(value)


def tagged_by_psutil(tag: str) -> list[int]:
    """An independent scan: every live process whose environment carries the tag."""
    found = []
    for p in psutil.process_iter():
        try:
            if p.status() == psutil.STATUS_ZOMBIE:
                continue
            value = p.environ().get(procs.TAG_VAR, "")
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
            continue
        if value == tag or value.startswith(tag + "/"):
            found.append(p.pid)
    return found


def gone_or_not_ours(pid: int) -> bool:
    """The pid no longer runs, and no zombie of it is left among our children."""
    try:
        p = psutil.Process(pid)
        return p.status() == psutil.STATUS_ZOMBIE and p.ppid() != os.getpid()
    except psutil.NoSuchProcess:
        return True


async def collect(proc: procs.Proc) -> str:
    return "".join([chunk async for chunk in proc.chunks()])


async def wait_until_tagged(tag: str, count: int) -> list[int]:
    for _ in range(200):
        pids = procs.find_tagged(tag)
        if len(pids) >= count:
            return pids
        await asyncio.sleep(0.02)
    raise AssertionError(f"expected {count} tagged processes, saw {procs.find_tagged(tag)}")


ESCAPES = """
import os, sys, time
# a plain child, a grandchild that leaves the session, and a double-forking daemon; all keep stdout open
os.system("sleep 300 &")
os.system("setsid sleep 300 &")
if os.fork() == 0:
    os.setsid()
    if os.fork() == 0:
        time.sleep(300)
    os._exit(0)
print("ready", flush=True)
time.sleep(300)
"""


async def wait_for_escapes(proc: procs.Proc, tag: str, said: list[str]) -> list[int]:
    """The tagged processes once the script said "ready" (in `said`, what its reader collected so far) and its
    setsid grandchild has left the session.

    Counting processes is not enough: a forked child is tagged before it calls setsid, and `sh -c "setsid …"`
    is tagged before setsid runs. Wait for the condition the test needs itself."""
    for _ in range(1500):
        pids = procs.find_tagged(tag)
        outside = [p for p in pids if _sid(p) not in (None, proc.pid)]
        # the setsid sleep and the daemon, beside python and a sleep
        if len(outside) >= 2 and len(pids) >= 4 and "ready" in "".join(said):
            return pids
        await asyncio.sleep(0.02)
    raise AssertionError(f"no process left the session: {[(p, _sid(p)) for p in procs.find_tagged(tag)]}, {said}")


def _sid(pid: int) -> int | None:
    try:
        return os.getsid(pid)
    except OSError:
        return None


async def test_kill_leaves_no_tagged_process(tag: str, tmp_path: Path) -> None:
    proc = await procs.start([PY, "-c", ESCAPES], cwd=tmp_path, env=dict(os.environ), tag=tag)
    said: list[str] = []

    async def read() -> str:
        async for chunk in proc.chunks():
            said.append(chunk)
        return "".join(said)

    reader = asyncio.create_task(read())
    try:
        before = await wait_for_escapes(proc, tag, said)
        await asyncio.wait_for(proc.kill(grace=0.5), 30)
        assert procs.find_tagged(tag) == []
        assert tagged_by_psutil(tag) == []
        assert all(gone_or_not_ours(p) for p in before)
        assert proc.returncode is not None
        assert await asyncio.wait_for(proc.wait(), 10) == proc.returncode
        assert "ready" in await asyncio.wait_for(reader, 10)
    finally:  # a failed assertion still ends the tree and the reader before the event loop closes
        await proc.kill(grace=0.1)
        reader.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await reader


async def test_wait_returns_when_a_grandchild_holds_the_pipe(tag: str, tmp_path: Path) -> None:
    proc = await procs.start("echo before; sleep 300 & echo after", cwd=tmp_path, env=dict(os.environ), tag=tag)
    out = asyncio.create_task(collect(proc))
    assert await asyncio.wait_for(proc.wait(), 20) == 0
    text = await asyncio.wait_for(out, 20)
    assert text == "before\nafter\n"
    assert len(procs.find_tagged(tag)) == 1  # the sleep still runs …
    await proc.kill(grace=0.2)
    assert procs.find_tagged(tag) == []  # … until kill


async def test_kill_tagged_finds_a_setsid_escapee_and_sub_tags(tag: str, tmp_path: Path) -> None:
    proc = await procs.start("setsid sleep 300 & sleep 300", cwd=tmp_path, env=dict(os.environ), tag=f"{tag}/call-1")
    pids = await wait_until_tagged(tag, 3)
    assert procs.find_tagged(f"{tag}/call-1") == pids
    assert procs.find_tagged(f"{tag}/call") == []  # a prefix is not a parent tag
    assert procs.kill_tagged(tag) >= 3
    assert procs.find_tagged(tag) == [] and tagged_by_psutil(tag) == []
    assert await asyncio.wait_for(proc.wait(), 10) < 0
    assert all(gone_or_not_ours(p) for p in pids)


async def test_exit_code_env_cwd_and_unbuffered_python(tag: str, tmp_path: Path) -> None:
    code = "import os; print(os.getcwd(), os.environ['MC_PROC_TAG'], os.environ['PYTHONUNBUFFERED'], os.environ['X'])"
    proc = await procs.start(
        [PY, "-c", code + "; raise SystemExit(3)"], cwd=tmp_path, env={"PATH": os.environ["PATH"], "X": "y"}, tag=tag
    )
    text = await collect(proc)
    assert await proc.wait() == 3
    assert text.split() == [str(tmp_path), tag, "1", "y"]


async def test_stderr_merged_or_separate(tag: str, tmp_path: Path) -> None:
    cmd = "echo out; echo err >&2"
    merged = await procs.start(cmd, cwd=tmp_path, env=dict(os.environ), tag=tag)
    assert sorted((await collect(merged)).split()) == ["err", "out"]
    separate = await procs.start(cmd, cwd=tmp_path, env=dict(os.environ), tag=tag, stderr="separate")
    out, err = await asyncio.gather(collect(separate), _join(separate.stderr_chunks()))
    assert (out, err) == ("out\n", "err\n")
    await separate.wait()


async def _join(chunks) -> str:
    return "".join([c async for c in chunks])


async def test_stdin_write_and_close(tag: str, tmp_path: Path) -> None:
    proc = await procs.start(
        [PY, "-c", "import sys; print(sys.stdin.read().upper())"],
        cwd=tmp_path,
        env=dict(os.environ),
        tag=tag,
        stdin=True,
    )
    await proc.write("hello ")
    await proc.write(b"world")
    proc.close_stdin()
    assert await collect(proc) == "HELLO WORLD\n"
    assert await proc.wait() == 0


async def test_pty_is_a_terminal_crlf_normalised_and_eio_is_eof(tag: str, tmp_path: Path) -> None:
    proc = await procs.start(
        [PY, "-c", "import sys; print(sys.stdout.isatty()); print('two')"],
        cwd=tmp_path,
        env=dict(os.environ),
        tag=tag,
        pty=True,
    )
    text = await asyncio.wait_for(collect(proc), 20)
    assert text == "True\ntwo\n"
    assert await proc.wait() == 0


async def test_five_megabyte_single_line(tag: str, tmp_path: Path) -> None:
    code = "import sys; sys.stdout.write('x' * 5_000_000 + '\\nend\\n')"
    proc = await procs.start([PY, "-c", code], cwd=tmp_path, env=dict(os.environ), tag=tag)
    splitter = LineSplitter(max_line=4096)
    lines: list[str] = []
    total = 0
    async for chunk in proc.chunks():
        total += len(chunk)
        lines += splitter.feed(chunk)
    lines += splitter.flush()
    assert await proc.wait() == 0
    assert total == 5_000_005
    assert lines == ["x" * 4096 + f" … [+{5_000_000 - 4096} chars]", "end"]


async def test_binary_garbage_is_decoded_and_cleaned(tag: str, tmp_path: Path) -> None:
    proc = await procs.start("head -c 300000 /dev/urandom", cwd=tmp_path, env=dict(os.environ), tag=tag)
    text = await collect(proc)
    assert await proc.wait() == 0
    assert "\ufffd" in text
    cleaned = clean_terminal_text(text)
    assert not any(ord(c) < 32 and c not in "\t\n" for c in cleaned)
    assert "\x1b" not in cleaned and "\r" not in cleaned


async def test_utf8_split_across_reads(tag: str, tmp_path: Path) -> None:
    code = "import os, time; os.write(1, b'h\\xc3'); time.sleep(0.3); os.write(1, b'\\xa9llo\\n')"
    proc = await procs.start([PY, "-c", code], cwd=tmp_path, env=dict(os.environ), tag=tag)
    assert await collect(proc) == "héllo\n"
    await proc.wait()


def test_decoder_keeps_a_split_character_and_a_split_crlf() -> None:
    dec = OutputDecoder()
    assert dec.decode(b"h\xc3") == "h"
    assert dec.decode(b"\xa9llo") == "éllo"
    assert dec.decode(b"\xff", final=True) == "\ufffd"
    pty = OutputDecoder(pty=True)
    assert pty.decode(b"a\r") == "a"
    assert pty.decode(b"\nb\r\n") == "\nb\n"
    assert pty.decode(b"c\r", final=True) == "c\r"


def test_line_splitter_caps_and_flushes() -> None:
    split = LineSplitter(max_line=4)
    assert split.feed("ab") == []
    assert split.feed("c\nabcdefgh\nx") == ["abc", "abcd … [+4 chars]"]
    assert split.flush() == ["x"]
    assert split.flush() == []
    pieces = LineSplitter(max_line=4, truncate=False)
    assert pieces.feed("abcdefghij\n") == ["abcd", "efgh", "ij"]


@pytest.mark.parametrize(
    ("raw", "clean"),
    [
        ("a\x1b[2Jb\x1b[H", "ab"),
        ("\x1b]0;evil title\x07text", "text"),
        ("\x1b]52;c;aGVsbG8=\x1b\\after", "after"),
        ("\x1b]8;;http://x\x1b\\link\x1b]8;;\x1b\\", "link"),
        ("\x1bPq#0;2;0;0;0\x1b\\img", "img"),
        ("\x1b[31mred\x1b[0m plain", "red plain"),
        ("10%\r50%\r\x1b[K100%\r\n", "100%\n"),
        ("one\r\ntwo\r\n", "one\ntwo\n"),
        ("ab\bc\x07\x00d\te", "acd\te"),
        ("\x1b]0;unterminated\nnext line", "\nnext line"),
        ("\x1b\x1b[2J\x1b[\x1b[2Jx", "x"),
        ("\x9b2Jc1\x9d0;t\x07", "c1"),
        ("a\x1b[2\bJ", "a"),
    ],
)
def test_clean_terminal_text(raw: str, clean: str) -> None:
    assert clean_terminal_text(raw) == clean


def test_clean_terminal_text_can_keep_colours_only() -> None:
    raw = "\x1b[1;31mred\x1b[0m\x1b[2J\x1b]0;t\x07\x1b[5A"
    assert clean_terminal_text(raw, keep_sgr=True) == "\x1b[1;31mred\x1b[0m"
    # A backspace cannot turn a kept colour code into a clear-screen.
    assert "\x1b[2J" not in clean_terminal_text("\x1b[2m\bJ", keep_sgr=True)


async def test_start_reports_a_missing_program(tag: str, tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="cannot start 'no-such-program-xyz'"):
        await procs.start(["no-such-program-xyz"], cwd=tmp_path, env=dict(os.environ), tag=tag)


def test_bad_tag_is_refused() -> None:
    with pytest.raises(ValueError, match="process tag"):
        procs.find_tagged("")
    with pytest.raises(ValueError, match="process tag"):
        procs.kill_tagged("a=b")
