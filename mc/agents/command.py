"""The command runner: any CLI (``aider --message {task} --yes-always``, a script) as an agent.

Its output is the agent's log; its worktree's diff, merge and discard work as for every agent.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shlex
import shutil
from pathlib import Path

from mc import events as ev
from mc import procs
from mc.agents.base import Runner, RunnerContext, RunnerError
from mc.tools.run import LogBound

#: A template that starts with this prefix runs in a pseudo-terminal.
PTY_PREFIX = "pty:"
#: Lines of output (at most TAIL_CHARS characters) quoted in the message of a failed run.
TAIL_LINES = 8
TAIL_CHARS = 4000
#: A partial line waits this long for its newline before it is shown anyway (prompts, progress).
PARTIAL_FLUSH = 0.3
#: A partial line longer than this is shown at once.
PARTIAL_MAX = 64 * 1024
#: Words that start shell syntax rather than name a program: no "command not found" check for them.
_SHELL_WORDS = frozenset(
    {"cd", "export", "exec", "if", "for", "while", "case", "(", "{", "!", "set", "unset", ".", "source", "eval",
     "test", "[", "true", "false", "echo", "printf", "read", "trap", "ulimit", "umask", "wait", "time"}
)  # fmt: skip

NO_TASK_SLOT = "this command has no {task} in its template: it cannot take a new instruction; kill it and start another"


def render(template: str, task: str) -> str:
    """The command line: every ``{task}`` replaced by the task, shell-quoted. Nothing else is substituted."""
    return template.replace("{task}", shlex.quote(task))


def split_template(template: str) -> tuple[str, bool]:
    """(template without the ``pty:`` prefix, whether it runs in a pty)."""
    stripped = template.lstrip()
    if stripped.startswith(PTY_PREFIX):
        return stripped[len(PTY_PREFIX) :].lstrip(), True
    return template, False


def program_of(command: str) -> str | None:
    """The program a command line starts (after VAR=value words), or None for shell syntax we do not check."""
    try:
        words = shlex.split(command)
    except ValueError:
        return None
    for word in words:
        if "=" in word and not word.startswith("=") and word.split("=", 1)[0].isidentifier():
            continue
        return None if word in _SHELL_WORDS else word
    return None


def missing_program(command: str, cwd: Path, path: str) -> str | None:
    """The program of the command when it cannot be found (on PATH, or relative to cwd), else None."""
    program = program_of(command)
    if program is None:
        return None
    if "/" in program:
        target = Path(program) if os.path.isabs(program) else cwd / program
        return None if target.exists() else program
    return None if shutil.which(program, path=path) else program


class CommandRunner(Runner):
    """Runs ``[[agents]] command`` in the agent's worktree; one run per instruction.

    * ``{task}`` in the template is replaced by the instruction, shell-quoted; the command runs through
      ``/bin/sh -c`` with the worktree as its current folder, the environment of mission control (a CLI
      agent needs its own API keys) and ``MC_TASK`` set to the instruction.
    * Output goes through a pipe by default: stdin is /dev/null, so a CLI that stops to ask a question
      reads end-of-file instead of waiting for ever, and most tools leave colour off. Start the template
      with ``pty:`` (``pty:aider --message {task}``) to run it in a pseudo-terminal instead, for programs
      that buffer their output or refuse to run without a terminal; a question then waits until you
      interrupt it. Either way the text is cleaned before it reaches the log (``\\r\\n``, escape sequences,
      ``\\r`` overwrites), and the end of output is the process's exit (a pty raises EIO after it).
    * Exit 0 → idle; any other exit → failed, with the exit code and the last lines of output.
    * Redirect kills the run and starts the command again with the new instruction appended to the
      task (the template needs ``{task}``). Interrupt kills the process group; resume runs it again
      with every instruction so far. No approvals: the command does what it does in its worktree.
    """

    kind = "command"

    def __init__(self, ctx: RunnerContext) -> None:
        super().__init__(ctx)
        self.template, self.pty = split_template(ctx.spec.command)
        self._task: asyncio.Task[None] | None = None
        self._proc: procs.Proc | None = None
        self._stopping = False

    # -- protocol ----------------------------------------------------------------------------------
    @property
    def busy(self) -> bool:
        return self._task is not None and not self._task.done()

    @property
    def takes_instructions(self) -> bool:
        return "{task}" in self.template

    def instruction(self) -> str:
        """Every instruction so far: the task, then each redirect, separated by blank lines."""
        texts = [str(item.get("content", "")) for item in self.ctx.agent.conversation if item.get("role") == "user"]
        return "\n\n".join(t for t in texts if t.strip()) or self.ctx.agent.task

    async def start(self, task: str) -> None:
        self._remember(task)
        self._launch()

    async def send(self, text: str) -> None:
        if not self.takes_instructions:
            raise RunnerError(NO_TASK_SLOT)
        await self._stop()
        self._remember(text)
        self._launch()

    async def resolve(self, approval_id: str, decision: str, reason: str = "") -> None:
        raise RunnerError(f"{self.ctx.agent.name} runs a command: it asks for no approvals ({approval_id})")

    async def interrupt(self) -> None:
        await self._stop()
        self.ctx.status("interrupted", "by the engineer")

    async def resume(self) -> None:
        if self.busy:
            return
        self._launch()

    async def kill(self) -> None:
        await self._stop()
        await asyncio.to_thread(procs.kill_tagged, self.ctx.tag)

    # -- running -----------------------------------------------------------------------------------
    def _remember(self, text: str) -> None:
        self.ctx.emit(ev.ConversationItem(agent=self.ctx.agent_id, item={"role": "user", "content": text}))

    def _launch(self) -> None:
        self._stopping = False
        self.ctx.status("running")
        self._task = asyncio.get_running_loop().create_task(self._run(self.instruction()))

    async def _stop(self) -> None:
        """Kill the running command (its whole tree) and wait for the run to end."""
        self._stopping = True
        proc, task = self._proc, self._task
        if proc is not None:
            await proc.kill(grace=1.0)
        if task is not None and not task.done():
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        self._proc = None

    def _fail(self, message: str) -> None:
        self.ctx.emit(ev.ErrorEvent(agent=self.ctx.agent_id, message=message, fatal=True))
        self.ctx.status("failed", message)

    async def _run(self, instruction: str) -> None:
        ctx = self.ctx
        command = render(self.template, instruction)
        env = dict(os.environ)
        env["MC_TASK"] = instruction
        if self.pty:
            env.setdefault("TERM", "xterm-256color")
        else:
            env.setdefault("TERM", "dumb")
        missing = missing_program(command, ctx.worktree, env.get("PATH", os.defpath))
        if missing is not None:
            self._fail(f"command not found: {missing}: install it or fix [[agents]] command for {ctx.agent.name}")
            return
        tail: list[str] = []
        try:
            proc = await procs.start(command, cwd=ctx.worktree, env=env, pty=self.pty, tag=ctx.tag)
        except OSError as exc:
            self._fail(f"{exc}: fix [[agents]] command for {ctx.agent.name}")
            return
        self._proc = proc
        try:
            await self._pump(proc, tail)
            code = await proc.wait()
        except asyncio.CancelledError:
            with contextlib.suppress(Exception):
                await asyncio.shield(proc.kill(grace=0.5))
            raise
        finally:
            if self._proc is proc:
                self._proc = None
        if self._stopping:
            return
        if code == 0:
            ctx.status("idle", "the command exited 0")
            return
        quoted = procs.clean_terminal_text("".join(tail)[-TAIL_CHARS:])
        lines = [line.strip() for line in quoted.splitlines() if line.strip()]
        last = " | ".join(lines[-TAIL_LINES:])[-600:]
        if code == 127 and "not found" in last:
            program = program_of(command) or command.split()[0]
            self._fail(f"command not found: {program}: install it or fix [[agents]] command ({last})")
        elif code < 0:
            self._fail(f"the command was killed by signal {-code}" + (f": {last}" if last else ""))
        else:
            self._fail(f"the command exited {code}" + (f": {last}" if last else " without output"))

    async def _pump(self, proc: procs.Proc, tail: list[str]) -> None:
        """Output → cleaned TextDelta events, whole lines at a time; a partial line shows after a pause. One run
        logs its head and tail and the count of what was between (LogBound), however much it prints."""
        ctx = self.ctx
        pending = ""

        def show(text: str) -> None:
            clean = procs.clean_terminal_text(text)
            if clean:
                ctx.emit(ev.TextDelta(agent=ctx.agent_id, text=clean))

        logged = LogBound(show)

        def emit(text: str) -> None:
            tail.append(text)  # cleaned when a failure quotes it
            if len(tail) > 64:
                tail[:] = ["".join(tail)[-TAIL_CHARS:]]
            logged.add(text)

        chunks = proc.chunks()
        nxt: asyncio.Task[str] | None = None
        try:
            while True:
                if nxt is None:
                    nxt = asyncio.ensure_future(anext(chunks))
                done, _ = await asyncio.wait({nxt}, timeout=PARTIAL_FLUSH if pending else None)
                if not done:  # quiet for a while with a partial line: show it
                    emit(pending)
                    pending = ""
                    continue
                try:
                    chunk = nxt.result()
                except StopAsyncIteration:
                    break
                finally:
                    nxt = None
                pending += chunk
                cut = pending.rfind("\n")
                if cut >= 0:
                    emit(pending[: cut + 1])
                    pending = pending[cut + 1 :]
                if len(pending) > PARTIAL_MAX:
                    emit(pending)
                    pending = ""
            if pending:
                emit(pending + "\n")
        finally:
            logged.finish()
            if nxt is not None and not nxt.done():
                nxt.cancel()
                with contextlib.suppress(BaseException):
                    await nxt
