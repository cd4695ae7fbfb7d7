#!/usr/bin/env python3
"""A stand-in for `claude -p --input-format stream-json --output-format stream-json --permission-prompt-tool stdio`.

The claude runner's own tests run the real Claude Code CLI (tests/test_runner_claude.py); this stand-in is kept
for the cross-runner approve-all table in tests/test_approve_all.py, which scripts one command per instruction.

It speaks the recorded protocol of Claude Code's SDK mode, one JSON object per line:

* stdin: ``{"type":"user","message":{"role":"user","content":…}}`` messages, ``control_request`` (``initialize``,
  ``interrupt``) and ``control_response`` (answers to its ``can_use_tool`` questions).
* stdout: ``system``/``init`` (with the session id), ``assistant`` (content blocks ``text`` and ``tool_use``),
  ``user`` (``tool_result``), ``result`` (usage, session id; ``error_during_execution`` after an interrupt),
  ``control_request`` ``can_use_tool`` and ``control_response`` to our requests.

Its "model" is a script keyed on the user's text:
  ``run: CMD``    asks to run CMD with Bash; runs it in its cwd only when allowed; reports the answer.
  ``write: PATH`` asks to Write PATH; writes it only when allowed.
  ``sleep: N``    works for N seconds (interruptible).
  ``crash``       writes an error to stderr and exits 3.
  anything else   is echoed back.
Every line it receives and its argv are appended to $FAKE_CLAUDE_LOG (when set), as JSON.
"""

from __future__ import annotations

import json
import os
import queue
import subprocess
import sys
import threading
import time
import uuid

LOG = os.environ.get("FAKE_CLAUDE_LOG", "")


def log(entry: dict) -> None:
    if LOG:
        with open(LOG, "a", encoding="utf-8") as fh:
            fh.write(json.dumps(entry) + "\n")


def out(obj: dict) -> None:
    sys.stdout.write(json.dumps(obj) + "\n")
    sys.stdout.flush()


def parse_args(argv: list[str]) -> dict:
    opts = {"resume": "", "model": "fake-model", "flags": set()}
    i = 0
    while i < len(argv):
        arg = argv[i]
        if arg.startswith("--resume="):
            opts["resume"] = arg.split("=", 1)[1]
        elif arg == "--resume":
            i += 1
            opts["resume"] = argv[i]
        elif arg == "--model":
            i += 1
            opts["model"] = argv[i]
        elif arg in ("--output-format", "--input-format", "--permission-prompt-tool"):
            i += 1
            opts["flags"].add(f"{arg}={argv[i]}")
        else:
            opts["flags"].add(arg)
        i += 1
    return opts


class Interrupted(Exception):
    pass


class Fake:
    def __init__(self, opts: dict) -> None:
        self.opts = opts
        self.session = opts["resume"] or f"sess-{uuid.uuid4().hex[:12]}"
        self.inbox: queue.Queue[dict | None] = queue.Queue()
        self.users: list[dict] = []
        self.answers: dict[str, dict] = {}
        self.eof = False
        self.turns = 0
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        for line in sys.stdin:
            line = line.strip()
            if not line:
                continue
            msg = json.loads(line)
            log({"received": msg})
            self.inbox.put(msg)
        self.inbox.put(None)

    def pump(self, timeout: float) -> None:
        """Handle one incoming line (or none within timeout). Raises Interrupted on an interrupt."""
        try:
            msg = self.inbox.get(timeout=timeout)
        except queue.Empty:
            return
        if msg is None:
            self.eof = True
            return
        kind = msg.get("type")
        if kind == "user":
            self.users.append(msg)
        elif kind == "control_response":
            resp = msg["response"]
            self.answers[resp["request_id"]] = resp
        elif kind == "control_request":
            sub = msg["request"]["subtype"]
            out(
                {
                    "type": "control_response",
                    "response": {"subtype": "success", "request_id": msg["request_id"], "response": {}},
                }
            )
            if sub == "interrupt":
                raise Interrupted

    def assistant(self, *blocks: dict) -> None:
        out(
            {
                "type": "assistant",
                "message": {
                    "id": f"msg_{uuid.uuid4().hex[:10]}",
                    "type": "message",
                    "role": "assistant",
                    "model": self.opts["model"],
                    "content": list(blocks),
                    "stop_reason": None,
                    "usage": {"input_tokens": 10, "output_tokens": 5},
                },
                "parent_tool_use_id": None,
                "session_id": self.session,
            }
        )

    def say(self, text: str) -> None:
        self.assistant({"type": "text", "text": text})

    def result(self, text: str | None, subtype: str = "success", is_error: bool = False) -> None:
        msg = {
            "type": "result",
            "subtype": subtype,
            "is_error": is_error,
            "duration_ms": 12,
            "duration_api_ms": 10,
            "num_turns": self.turns,
            "session_id": self.session,
            "total_cost_usd": 0.0012,
            "usage": {
                "input_tokens": 100,
                "cache_creation_input_tokens": 20,
                "cache_read_input_tokens": 30,
                "output_tokens": 40,
            },
        }
        if text is not None:  # an interrupted turn's result has no "result" key
            msg["result"] = text
        out(msg)

    def ask(self, tool: str, tool_input: dict) -> dict:
        """Use a tool: announce it, ask permission, wait for the answer (interruptible)."""
        tool_id = f"toolu_{uuid.uuid4().hex[:12]}"
        self.assistant({"type": "tool_use", "id": tool_id, "name": tool, "input": tool_input})
        request_id = f"perm-{uuid.uuid4().hex[:8]}"
        out(
            {
                "type": "control_request",
                "request_id": request_id,
                "request": {
                    "subtype": "can_use_tool",
                    "tool_name": tool,
                    "input": tool_input,
                    "permission_suggestions": [],
                    "tool_use_id": tool_id,
                },
            }
        )
        while request_id not in self.answers:
            if self.eof:
                sys.exit(0)
            self.pump(0.05)
        answer = self.answers.pop(request_id)
        decision = answer.get("response", {})
        return {"id": tool_id, **decision}

    def tool_result(self, tool_id: str, content: str, is_error: bool) -> None:
        out(
            {
                "type": "user",
                "message": {
                    "role": "user",
                    "content": [
                        {"tool_use_id": tool_id, "type": "tool_result", "content": content, "is_error": is_error}
                    ],
                },
                "parent_tool_use_id": None,
                "session_id": self.session,
            }
        )

    def turn(self, text: str) -> None:
        self.turns += 1
        out(
            {
                "type": "system",
                "subtype": "init",
                "session_id": self.session,
                "cwd": os.getcwd(),
                "tools": ["Bash", "Edit", "Read", "Write"],
                "model": self.opts["model"],
                "permissionMode": "default",
                "apiKeySource": "none",
            }
        )
        if self.opts["resume"] and self.turns == 1:
            self.say(f"(resumed session {self.session})")
        if text.startswith("run: "):
            command = text[5:]
            self.say(f"I will run {command}.")
            answer = self.ask("Bash", {"command": command, "description": "run what was asked"})
            if answer.get("behavior") == "allow":
                command = answer.get("updatedInput", {}).get("command", command)
                done = subprocess.run(command, shell=True, capture_output=True, text=True)
                self.tool_result(answer["id"], done.stdout + done.stderr, done.returncode != 0)
                self.say(f"Ran it: exit {done.returncode}.")
                self.result(f"Ran it: exit {done.returncode}.")
            else:
                message = answer.get("message", "")
                self.tool_result(answer["id"], message, True)
                self.say(f"Not run. Denied with: {message}")
                self.result(f"Not run. Denied with: {message}")
        elif text.startswith("write: "):
            path = text[7:].strip()
            answer = self.ask("Write", {"file_path": os.path.join(os.getcwd(), path), "content": "written\n"})
            if answer.get("behavior") == "allow":
                with open(path, "w", encoding="utf-8") as fh:
                    fh.write("written\n")
                self.tool_result(answer["id"], f"File created successfully at: {path}", False)
                self.result("Written.")
            else:
                self.tool_result(answer["id"], answer.get("message", ""), True)
                self.result("Not written.")
        elif text.startswith("sleep: "):
            self.say("Working on it.")
            deadline = time.monotonic() + float(text[7:])
            while time.monotonic() < deadline:
                self.pump(0.05)
            self.say("Finished working.")
            self.result("Finished working.")
        elif text == "crash":
            sys.stderr.write("fatal: the fake was told to crash\n")
            sys.stderr.flush()
            sys.exit(3)
        else:
            self.say(f"echo: {text}")
            self.result(f"echo: {text}")

    def main(self) -> None:
        log({"argv": sys.argv[1:], "cwd": os.getcwd()})
        while True:
            if self.users:
                msg = self.users.pop(0)
                content = msg["message"]["content"]
                if isinstance(content, list):
                    content = "".join(b.get("text", "") for b in content if b.get("type") == "text")
                try:
                    self.turn(content)
                except Interrupted:
                    self.result(None, subtype="error_during_execution", is_error=True)
                continue
            if self.eof:
                return
            try:
                self.pump(0.2)
            except Interrupted:
                pass


if __name__ == "__main__":
    Fake(parse_args(sys.argv[1:])).main()
