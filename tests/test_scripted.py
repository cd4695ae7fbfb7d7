"""The scripted model server, driven by the real openai SDK over real HTTP on 127.0.0.1."""

from __future__ import annotations

import http.client
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx2
import openai
import pytest
from openai import AsyncOpenAI

from mc.scripted import ScenarioError, ScriptedServer, demo_scenario_path, load_scenario, serve_in_thread
from mc.scripted.server import split_words

TOOL_NAMES = {
    "shell": ["command"],
    "read_file": ["path"],
    "write_file": ["path", "content"],
    "apply_patch": ["patch"],
    "list_files": ["path"],
    "search": ["pattern", "path"],
}


def _schema(params: list[str]) -> dict[str, Any]:
    return {"type": "object", "properties": {p: {"type": "string"} for p in params}, "required": params}


RESPONSES_TOOLS = [{"type": "function", "name": n, "parameters": _schema(p)} for n, p in TOOL_NAMES.items()]
CHAT_TOOLS = [{"type": "function", "function": {"name": n, "parameters": _schema(p)}} for n, p in TOOL_NAMES.items()]

TWO_STEP = {
    "turns": [
        {"say": "I'll run the tests.", "tool": "shell", "args": {"command": "pytest -q"}},
        {"say": "The run ended with {output_last_line}."},
    ]
}


@pytest.fixture
async def serve():
    servers: list[ScriptedServer] = []

    async def start(scenario: Any, **kwargs: Any) -> ScriptedServer:
        server = ScriptedServer(scenario, **kwargs)
        await server.start()
        servers.append(server)
        return server

    yield start
    for server in servers:
        await server.stop()


def client(server: ScriptedServer, **kwargs: Any) -> AsyncOpenAI:
    kwargs.setdefault("max_retries", 0)
    kwargs.setdefault("timeout", 10.0)
    return AsyncOpenAI(base_url=server.base_url, api_key="test-key", **kwargs)


# -- Responses API ---------------------------------------------------------------------------------


async def test_responses_stream_text_and_tool_call(serve) -> None:
    server = await serve(TWO_STEP)
    async with client(server) as c, c.responses.stream(model="any", input="Run the tests", tools=RESPONSES_TOOLS) as s:
        types = []
        deltas = []
        async for event in s:
            types.append(event.type)
            if event.type == "response.output_text.delta":
                deltas.append(event.delta)
        final = await s.get_final_response()
    assert types[0] == "response.created"
    assert types[-1] == "response.completed"
    for expected in (
        "response.output_item.added",
        "response.content_part.added",
        "response.output_text.done",
        "response.content_part.done",
        "response.function_call_arguments.delta",
        "response.function_call_arguments.done",
        "response.output_item.done",
    ):
        assert expected in types
    assert deltas == ["I'll", " run", " the", " tests."]
    assert final.output_text == "I'll run the tests."
    calls = [item for item in final.output if item.type == "function_call"]
    assert len(calls) == 1
    assert calls[0].name == "shell"
    assert json.loads(calls[0].arguments) == {"command": "pytest -q"}
    assert final.usage is not None
    assert final.usage.output_tokens > 0 and final.usage.input_tokens > 0
    assert final.usage.total_tokens == final.usage.input_tokens + final.usage.output_tokens


async def test_input_tokens_do_not_depend_on_the_length_of_a_path(serve) -> None:
    # the built-in agent's prompt names its worktree: a temporary folder whose name grows run by run
    server = await serve(TWO_STEP)
    counts = []
    async with client(server) as c:
        for folder in ("/tmp/p-1/wt", "/tmp/pytest-of-root/pytest-123456/test_snapshot_fleet_view0/worktrees/wt"):
            reply = await c.responses.create(
                model="any", instructions=f"You work in a git worktree at {folder}.", input="Run the tests"
            )
            assert reply.usage is not None
            counts.append(reply.usage.input_tokens)
    assert counts[0] == counts[1] == 12  # "any" + 8 words of instructions + 3 of input


async def test_responses_conversation_plays_turns_then_done(serve) -> None:
    server = await serve(TWO_STEP)
    async with client(server) as c:
        first = await c.responses.create(model="any", input="Run the tests", tools=RESPONSES_TOOLS)
        call = next(item for item in first.output if item.type == "function_call")
        history: list[Any] = [{"role": "user", "content": "Run the tests"}]
        history += [{"role": "assistant", "content": first.output_text}]
        history += [{"type": "function_call", "call_id": call.call_id, "name": call.name, "arguments": call.arguments}]
        history += [{"type": "function_call_output", "call_id": call.call_id, "output": "....\n4 passed in 0.03s\n"}]
        second = await c.responses.create(model="any", input=history, tools=RESPONSES_TOOLS)
        assert second.output_text == "The run ended with 4 passed in 0.03s."
        assert not [item for item in second.output if item.type == "function_call"]
        assert second.usage is not None and second.usage.output_tokens > 0
        history += [{"role": "assistant", "content": second.output_text}, {"role": "user", "content": "Thanks!"}]
        third = await c.responses.create(model="any", input=history, tools=RESPONSES_TOOLS)
        assert third.output_text == "Done."
    assert [r.turn for r in server.requests] == [0, 1, None]
    assert server.requests[1].tool_outputs() == ["....\n4 passed in 0.03s\n"]
    assert server.requests[2].user_texts() == ["Run the tests", "Thanks!"]


async def test_responses_previous_response_id_continues(serve) -> None:
    server = await serve(TWO_STEP)
    async with client(server) as c:
        first = await c.responses.create(model="any", input="Run the tests", tools=RESPONSES_TOOLS)
        call = next(item for item in first.output if item.type == "function_call")
        output = [{"type": "function_call_output", "call_id": call.call_id, "output": "1 failed"}]
        second = await c.responses.create(
            model="any", input=output, previous_response_id=first.id, tools=RESPONSES_TOOLS
        )
    assert second.output_text == "The run ended with 1 failed."
    assert server.requests[1].user_texts() == ["Run the tests"]


async def test_several_tool_calls_in_one_turn(serve) -> None:
    scenario = {
        "turns": [
            {
                "say": "Reading both.",
                "calls": [
                    {"tool": "read_file", "args": {"path": "a.py"}},
                    {"tool": "search", "args": {"pattern": "def main", "path": "."}},
                ],
            }
        ]
    }
    server = await serve(scenario)
    async with client(server) as c, c.responses.stream(model="m", input="go", tools=RESPONSES_TOOLS) as s:
        final = await s.get_final_response()
    calls = [item for item in final.output if item.type == "function_call"]
    assert [(c.name, json.loads(c.arguments)) for c in calls] == [
        ("read_file", {"path": "a.py"}),
        ("search", {"pattern": "def main", "path": "."}),
    ]
    assert len({c.call_id for c in calls}) == 2


# -- Chat Completions ------------------------------------------------------------------------------


async def test_chat_stream_tool_calls_and_usage(serve) -> None:
    server = await serve(TWO_STEP)
    messages = [{"role": "system", "content": "You are careful."}, {"role": "user", "content": "Run the tests"}]
    async with client(server) as c:
        stream = await c.chat.completions.create(
            model="m", messages=messages, tools=CHAT_TOOLS, stream=True, stream_options={"include_usage": True}
        )
        text = ""
        args: dict[int, str] = {}
        names: dict[int, str] = {}
        finish = None
        usage = None
        async for chunk in stream:
            if chunk.usage is not None:
                usage = chunk.usage
            for choice in chunk.choices:
                text += choice.delta.content or ""
                finish = choice.finish_reason or finish
                for call in choice.delta.tool_calls or []:
                    args[call.index] = args.get(call.index, "") + (call.function.arguments or "")
                    if call.function.name:
                        names[call.index] = call.function.name
    assert text == "I'll run the tests."
    assert names == {0: "shell"}
    assert json.loads(args[0]) == {"command": "pytest -q"}
    assert finish == "tool_calls"
    assert usage is not None and usage.completion_tokens > 0
    assert usage.total_tokens == usage.prompt_tokens + usage.completion_tokens


async def test_chat_stream_helper_and_non_streaming(serve) -> None:
    server = await serve(TWO_STEP)
    messages: list[Any] = [{"role": "user", "content": "Run the tests"}]
    async with client(server) as c:
        async with c.chat.completions.stream(model="m", messages=messages, tools=CHAT_TOOLS) as s:
            async for _ in s:
                pass
            streamed = await s.get_final_completion()
        plain = await c.chat.completions.create(model="m", messages=messages, tools=CHAT_TOOLS)
        for completion in (streamed, plain):
            message = completion.choices[0].message
            assert message.content == "I'll run the tests."
            assert message.tool_calls is not None and message.tool_calls[0].function.name == "shell"
            assert json.loads(message.tool_calls[0].function.arguments) == {"command": "pytest -q"}
        assert plain.choices[0].finish_reason == "tool_calls"
        assert plain.usage is not None and plain.usage.completion_tokens > 0
        call = plain.choices[0].message.tool_calls[0]
        messages += [
            {"role": "assistant", "content": plain.choices[0].message.content, "tool_calls": [call.model_dump()]},
            {"role": "tool", "tool_call_id": call.id, "content": "2 passed"},
        ]
        second = await c.chat.completions.create(model="m", messages=messages, tools=CHAT_TOOLS)
    assert second.choices[0].message.content == "The run ended with 2 passed."
    assert second.choices[0].finish_reason == "stop"
    assert second.choices[0].message.tool_calls is None


# -- choosing turns --------------------------------------------------------------------------------

DENIAL = {
    "agents": [
        {
            "name": "writer",
            "turns": [
                {"say": "Writing the file.", "tool": "write_file", "args": {"path": "x.py", "content": "x = 1\n"}},
                {
                    "choice": "after",
                    "when_tool_output_contains": "denied",
                    "say": "Understood, I won't write x.py.",
                },
                {"choice": "after", "say": "Wrote x.py."},
                {
                    "when_user_contains": "use pathlib",
                    "say": "Switching to pathlib.",
                    "tool": "shell",
                    "args": {"command": "grep -rn os.path ."},
                },
                {"say": "Finished."},
            ],
        }
    ]
}


async def _first_call(c: AsyncOpenAI) -> tuple[list[Any], Any]:
    first = await c.responses.create(model="writer", input="Write x.py", tools=RESPONSES_TOOLS)
    call = next(item for item in first.output if item.type == "function_call")
    history: list[Any] = [
        {"role": "user", "content": "Write x.py"},
        {"role": "assistant", "content": first.output_text},
    ]
    history.append({"type": "function_call", "call_id": call.call_id, "name": call.name, "arguments": call.arguments})
    return history, call


async def test_turn_chosen_by_denial_in_tool_output(serve) -> None:
    server = await serve(DENIAL)
    async with client(server) as c:
        history, call = await _first_call(c)
        reason = "The engineer denied this call. Their reason: keep x.py untouched"
        denied = [*history, {"type": "function_call_output", "call_id": call.call_id, "output": reason}]
        reply = await c.responses.create(model="writer", input=denied, tools=RESPONSES_TOOLS)
        assert reply.output_text == "Understood, I won't write x.py."
        approved = [*history, {"type": "function_call_output", "call_id": call.call_id, "output": "wrote 6 bytes"}]
        reply = await c.responses.create(model="writer", input=approved, tools=RESPONSES_TOOLS)
        assert reply.output_text == "Wrote x.py."
    assert "Their reason: keep x.py untouched" in server.requests_for("writer")[1].tool_outputs()[-1]
    assert [r.turn for r in server.requests_for("writer")] == [0, 1, 2]


async def test_turn_chosen_by_user_redirect_skips_alternatives(serve) -> None:
    server = await serve(DENIAL)
    async with client(server) as c:
        history, call = await _first_call(c)
        history.append({"type": "function_call_output", "call_id": call.call_id, "output": "The engineer denied it"})
        reply = await c.responses.create(model="writer", input=history, tools=RESPONSES_TOOLS)
        history += [{"role": "assistant", "content": reply.output_text}]
        # Not the redirect the scenario waits for: the conditional turn is skipped.
        other = await c.responses.create(
            model="writer", input=[*history, {"role": "user", "content": "carry on"}], tools=RESPONSES_TOOLS
        )
        assert other.output_text == "Finished."
        redirect = await c.responses.create(
            model="writer",
            input=[*history, {"role": "user", "content": "Please USE PATHLIB here"}],
            tools=RESPONSES_TOOLS,
        )
    assert redirect.output_text == "Switching to pathlib."
    assert [item.name for item in redirect.output if item.type == "function_call"] == ["shell"]
    assert server.requests[-1].user_texts()[-1] == "Please USE PATHLIB here"


async def test_played_turns_are_recognised_after_a_skipped_turn(serve) -> None:
    scenario = {
        "turns": [
            {"when_user_contains": "alpha", "say": "A"},
            {"say": "B, the second turn."},
            {"say": "C, {output_last_line}."},
        ]
    }
    server = await serve(scenario)
    messages: list[Any] = [{"role": "user", "content": "beta"}]
    async with client(server) as c:
        first = await c.chat.completions.create(model="m", messages=messages)
        assert first.choices[0].message.content == "B, the second turn."
        messages += [{"role": "assistant", "content": "B, the second turn."}, {"role": "user", "content": "more"}]
        second = await c.chat.completions.create(model="m", messages=messages)
        assert second.choices[0].message.content == "C, ."
        messages += [{"role": "assistant", "content": "C, ."}, {"role": "user", "content": "and?"}]
        third = await c.chat.completions.create(model="m", messages=messages)
    assert third.choices[0].message.content == "Done."
    assert [r.turn for r in server.requests] == [1, 2, None]


async def test_missing_tool_is_answered_with_text(serve) -> None:
    server = await serve({"turns": [{"tool": "deploy", "args": {"env": "prod"}}]})
    async with client(server) as c:
        reply = await c.responses.create(model="m", input="go", tools=RESPONSES_TOOLS)
    assert "'deploy'" in reply.output_text and "read_file" in reply.output_text
    assert not [item for item in reply.output if item.type == "function_call"]


async def test_model_name_and_marker_select_agent(serve) -> None:
    scenario = {
        "agents": [
            {"name": "alpha", "turns": [{"say": "alpha here"}]},
            {"name": "beta", "marker": "[beta]", "turns": [{"say": "beta here"}]},
        ]
    }
    server = await serve(scenario)
    async with client(server) as c:
        assert (await c.responses.create(model="alpha", input="hi")).output_text == "alpha here"
        by_marker = await c.chat.completions.create(model="gpt-x", messages=[{"role": "user", "content": "[beta] hi"}])
        assert by_marker.choices[0].message.content == "beta here"
        with pytest.raises(openai.NotFoundError, match="use one of alpha, beta"):
            await c.responses.create(model="gamma", input="hi")
        models = await c.models.list()
    assert [m.id for m in models.data] == ["alpha", "beta"]
    assert [r.agent for r in server.requests] == ["alpha", "beta", ""]
    assert server.requests_for("beta")[0].body["model"] == "gpt-x"


async def test_repeat_streams_long_text_in_word_deltas(serve) -> None:
    server = await serve({"turns": [{"say": "line {n} of the listing", "repeat": 200}]}, tokens_per_second=5000)
    async with client(server) as c, c.responses.stream(model="m", input="go") as s:
        deltas = [e.delta async for e in s if e.type == "response.output_text.delta"]
        final = await s.get_final_response()
    lines = final.output_text.split("\n")
    assert len(lines) == 200
    assert lines[0] == "line 1 of the listing" and lines[-1] == "line 200 of the listing"
    assert "".join(deltas) == final.output_text
    assert len(deltas) == 5 * 200
    assert final.usage is not None and final.usage.output_tokens == len(deltas)


def test_split_words_round_trips() -> None:
    for text in ["", "one", "  lead", "a b\n\nc  ", "tab\tsep", '{"k": "v w"}']:
        assert "".join(split_words(text)) == text
    assert split_words("a b") == ["a", " b"]


# -- faults ----------------------------------------------------------------------------------------


async def test_429_then_success_with_sdk_retries(serve) -> None:
    scenario = {"turns": [{"say": "made it"}], "faults": [{"kind": "429", "times": 1, "retry_after": 0.05}]}
    server = await serve(scenario)
    async with client(server, max_retries=2) as c:
        reply = await c.responses.create(model="m", input="hi")
    assert reply.output_text == "made it"
    assert [r.fault for r in server.requests] == ["429", ""]


async def test_429_without_retries_raises_rate_limit(serve) -> None:
    server = await serve({"turns": [{"say": "x"}], "faults": [{"kind": "429", "times": 1, "retry_after": 0.05}]})
    async with client(server) as c:
        with pytest.raises(openai.RateLimitError) as info:
            await c.chat.completions.create(model="m", messages=[{"role": "user", "content": "hi"}])
    assert info.value.response.headers["retry-after"] == "0.05"


async def test_500_on_every_request_fails_after_retries(serve) -> None:
    scenario = {"agents": [{"name": "flaky", "faults": [{"kind": "500", "message": "backend on fire"}]}]}
    server = await serve(scenario)
    async with client(server, max_retries=1) as c:
        with pytest.raises(openai.InternalServerError, match="backend on fire"):
            await c.responses.create(model="flaky", input="hi", stream=True)
    assert [r.fault for r in server.requests] == ["500", "500"]


@pytest.mark.parametrize("api", ["responses", "chat"])
async def test_stream_cut_mid_sse_raises(serve, api: str) -> None:
    server = await serve({"turns": [{"say": "one two three four five six", "fault": {"kind": "cut", "after": 4}}]})
    received = []
    async with client(server) as c:
        with pytest.raises(openai.APIConnectionError):
            if api == "responses":
                async for event in await c.responses.create(model="m", input="hi", stream=True):
                    received.append(event)
            else:
                messages = [{"role": "user", "content": "hi"}]
                async for chunk in await c.chat.completions.create(model="m", messages=messages, stream=True):
                    received.append(chunk)
    assert len(received) == 4


async def test_turn_fault_hits_first_play_only_then_stream_completes(serve) -> None:
    server = await serve({"turns": [{"say": "hello there", "fault": {"kind": "cut", "times": 1, "after": 2}}]})
    async with client(server) as c:
        with pytest.raises(openai.APIConnectionError):
            async for _ in await c.responses.create(model="m", input="hi", stream=True):
                pass
        async with c.responses.stream(model="m", input="hi") as s:
            final = await s.get_final_response()
    assert final.output_text == "hello there"


@pytest.mark.parametrize("stream", [True, False])
async def test_malformed_json_raises(serve, stream: bool) -> None:
    server = await serve({"turns": [{"say": "one two three", "fault": {"kind": "malformed", "after": 3}}]})
    async with client(server) as c:
        with pytest.raises(json.JSONDecodeError):
            if stream:
                async for _ in await c.responses.create(model="m", input="hi", stream=True):
                    pass
            else:
                await c.responses.create(model="m", input="hi")


async def test_stall_makes_client_time_out(serve) -> None:
    server = await serve({"turns": [{"say": "slow words", "fault": {"kind": "stall", "after": 2, "seconds": 30}}]})
    received = []
    async with client(server, timeout=0.3) as c:
        with pytest.raises(openai.APITimeoutError):
            async for event in await c.responses.create(model="m", input="hi", stream=True):
                received.append(event.type)
    assert received == ["response.created", "response.in_progress"]


async def test_closed_port_is_refused() -> None:
    server = ScriptedServer({"turns": [{"say": "x"}]})
    await server.start()
    await server.stop()
    async with client(server) as c:
        with pytest.raises(openai.APIConnectionError):
            await c.responses.create(model="m", input="hi")


# -- HTTP, threads, CLI, scenarios -----------------------------------------------------------------


def test_keep_alive_serves_several_requests_on_one_connection() -> None:
    with serve_in_thread({"turns": [{"say": "first"}]}) as handle:
        conn = http.client.HTTPConnection("127.0.0.1", handle.port, timeout=10)
        bodies = []
        for _ in range(3):
            conn.request(
                "POST",
                "/v1/chat/completions",
                body=json.dumps({"model": "m", "messages": []}),
                headers={"Content-Type": "application/json"},
            )
            response = conn.getresponse()
            assert response.status == 200
            bodies.append(json.loads(response.read()))
        conn.request("GET", "/v1/nothing")
        missing = conn.getresponse()
        assert missing.status == 404 and b"POST /v1/responses" in missing.read()
        conn.close()
        assert [b["choices"][0]["message"]["content"] for b in bodies] == ["first"] * 3
        assert len(handle.requests) == 3


def test_serve_in_thread_with_sync_client() -> None:
    handle = serve_in_thread(demo_scenario_path(), tokens_per_second=0, first_byte_delay=0)
    try:
        c = openai.OpenAI(base_url=handle.base_url, api_key="test-key", max_retries=0)
        reply = c.responses.create(model="demo-tests", input="Run the tests", tools=RESPONSES_TOOLS)
        call = next(item for item in reply.output if item.type == "function_call")
        assert call.name == "shell" and json.loads(call.arguments) == {"command": "python -m unittest -q"}
        c.close()
    finally:
        handle.stop()
    assert handle.requests[0].agent == "demo-tests"


def test_cli_prints_base_url_and_serves(tmp_path: Path) -> None:
    scenario = tmp_path / "one.toml"
    scenario.write_text('[[agents]]\nname = "solo"\n[[agents.turns]]\nsay = "from the cli"\n')
    command = [sys.executable, "-m", "mc.scripted", "--scenario", str(scenario), "--port", "0"]
    with subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) as proc:
        try:
            assert proc.stdout is not None
            base_url = proc.stdout.readline().strip()
            assert base_url.startswith("http://127.0.0.1:") and base_url.endswith("/v1")
            c = openai.OpenAI(base_url=base_url, api_key="test-key", max_retries=0)
            reply = c.chat.completions.create(model="solo", messages=[{"role": "user", "content": "hi"}])
            assert reply.choices[0].message.content == "from the cli"
            c.close()
        finally:
            proc.terminate()
        assert proc.wait(timeout=10) == 0


def test_cli_reports_bad_scenario(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text('[[agents]]\nname = "x"\n[[agents.turns]]\nsya = "typo"\n')
    result = subprocess.run(
        [sys.executable, "-m", "mc.scripted", "--scenario", str(bad)], capture_output=True, text=True, timeout=30
    )
    assert result.returncode == 2
    assert result.stdout == ""
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "bad.toml" in lines[0] and "agents[x].turns[1].sya" in lines[0]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ('[[agents]]\nname = "a"\n[[agents.turns]]\nsay = "x"\ntol = "shell"\n', "agents[a].turns[1].tol: unknown key"),
        ('[[agents]]\nname = "a"\n[[agents.faults]]\nkind = "teapot"\n', "agents[a].faults[1].kind: 'teapot'"),
        ('[[agents]]\n[[agents.turns]]\nsay = "x"\n', "agents[1].name: is missing"),
        ('[[agents]]\nname = "a"\n[[agents.turns]]\nrepeat = 3\n', "agents[a].turns[1]: says nothing"),
        ('[[agents]]\nname = "a"\n[[agents.turns]]\nsay = "x"\nrepeat = "many"\n', "turns[1].repeat: 'many' must be"),
        ('[[agents]]\nname = "a"\n[[agents]]\nname = "a"\n', "agents[a].name: is used twice"),
        ('tokens_per_second = -1\n[[agents]]\nname = "a"\n', "tokens_per_second: -1.0 must not be negative"),
        ('[[agents]]\nname = "a"\nturns = [\n', "TOML syntax error"),
        ("", "no agents"),
    ],
)
def test_load_scenario_errors_name_file_and_key(tmp_path: Path, text: str, expected: str) -> None:
    path = tmp_path / "scen.toml"
    path.write_text(text)
    with pytest.raises(ScenarioError) as info:
        load_scenario(path)
    message = str(info.value)
    assert "\n" not in message
    assert message.startswith(str(path))
    assert expected in message


def test_load_scenario_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ScenarioError, match=r"no such scenario file.*demo"):
        load_scenario(tmp_path / "nope.toml")


# -- the demo fleet --------------------------------------------------------------------------------


def test_demo_scenario_has_an_agent_for_each_demo_agent() -> None:
    scenario = load_scenario("demo")
    assert [a.name for a in scenario.agents] == [
        "demo-tests",
        "demo-refactor",
        "demo-flaky",
        "demo-docs",
        "demo-stream",
        "demo-rename",
        "demo-pick-a",
        "demo-pick-b",
        "demo-pick-c",
    ]
    tools = {c.tool for a in scenario.agents for t in a.turns for c in t.calls}
    assert tools <= set(TOOL_NAMES)


async def test_demo_agents_play_through(serve) -> None:
    server = await serve(demo_scenario_path(), tokens_per_second=0, first_byte_delay=0)
    async with client(server, max_retries=1) as c:
        with pytest.raises(openai.InternalServerError, match="the model is overloaded"):
            await c.responses.create(model="demo-flaky", input="Rename shout", tools=RESPONSES_TOOLS)
        writes = await _play(c, "demo-refactor", outputs={"shell": "Ran 4 tests in 0.001s\n\nOK"})
        assert sorted(writes) == ["README.md", "app/text.py", "tests/test_text.py"]
        docs = await _play(c, "demo-docs", outputs={})
        assert list(docs) == ["docs/usage.md", ".github/workflows/docs.yml"]
        renamed = await _play(c, "demo-rename", outputs={})
        assert list(renamed) == ["app/text.py"]
        await _play(c, "demo-stream", outputs={"shell": "\n".join(str(i) for i in range(1, 2001))})
    stream_reply = server.requests_for("demo-stream")[-1]
    assert stream_reply.turn == 1
    assert server.requests_for("demo-refactor")[-1].turn == 6


async def _play(c: AsyncOpenAI, model: str, outputs: dict[str, str]) -> dict[str, str]:
    """Run a scripted agent to its final text like a simple agent loop; returns the files it wrote."""
    history: list[Any] = [{"role": "user", "content": "Go"}]
    written: dict[str, str] = {}
    for _ in range(10):
        reply = await c.responses.create(model=model, input=history, tools=RESPONSES_TOOLS)
        calls = [item for item in reply.output if item.type == "function_call"]
        if reply.output_text:
            history.append({"role": "assistant", "content": reply.output_text})
        if not calls:
            assert "[scripted]" not in reply.output_text
            return written
        for call in calls:
            args = json.loads(call.arguments)
            if call.name == "write_file":
                written[args["path"]] = args["content"]
            history.append(
                {"type": "function_call", "call_id": call.call_id, "name": call.name, "arguments": call.arguments}
            )
            output = outputs.get(call.name, "ok")
            history.append({"type": "function_call_output", "call_id": call.call_id, "output": output})
    raise AssertionError(f"{model} did not finish in 10 turns")


async def test_demo_refactor_edits_pass_the_sample_tests(serve, tmp_path: Path) -> None:
    from mc.demo import make_sample_repo

    repo = make_sample_repo(tmp_path)
    server = await serve(demo_scenario_path(), tokens_per_second=0, first_byte_delay=0)
    async with client(server) as c:
        written = await _play(c, "demo-refactor", outputs={"shell": "OK"})
    for rel, content in written.items():
        (repo / rel).write_text(content)
    result = subprocess.run(
        [sys.executable, "-m", "unittest", "-q"], cwd=repo, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    assert "Ran 4 tests" in result.stderr


# -- Anthropic Messages API (what Claude Code calls) -----------------------------------------------

BASH_TOOL = {"name": "Bash", "description": "run a command", "input_schema": {"type": "object", "properties": {}}}


def anthropic_body(model: str, messages: list[dict[str, Any]], **extra: Any) -> dict[str, Any]:
    return {"model": model, "max_tokens": 1024, "messages": messages, "tools": [BASH_TOOL], **extra}


def sse_events(raw: str) -> list[tuple[str, dict[str, Any]]]:
    """(event name, data) per SSE event of a Messages stream."""
    out = []
    for block in raw.strip().split("\n\n"):
        fields = dict(line.split(": ", 1) for line in block.splitlines() if ": " in line)
        out.append((fields["event"], json.loads(fields["data"])))
    return out


async def post_messages(server: ScriptedServer, body: dict[str, Any]) -> httpx2.Response:
    async with httpx2.AsyncClient(base_url=f"http://127.0.0.1:{server.port}", timeout=10) as c:
        headers = {"x-api-key": "test-key", "anthropic-version": "2023-06-01"}
        response = await c.post("/v1/messages?beta=true", json=body, headers=headers)
        await response.aread()
        return response


CLAUDE_TURNS = {
    "agents": [
        {
            "name": "cl",
            "turns": [
                {"say": "I will run it.", "tool": "Bash", "args": {"command": "echo greeted", "description": "greet"}},
                {"when_tool_output_contains": "greeted", "say": "It printed {output_last_line}."},
                {"say": "Not run: {output_last_line}"},
            ],
        }
    ]
}


async def test_messages_stream_text_then_tool_use_with_usage(serve) -> None:
    server = await serve(CLAUDE_TURNS)
    response = await post_messages(server, anthropic_body("cl", [{"role": "user", "content": "greet"}], stream=True))
    assert response.status_code == 200 and response.headers["content-type"].startswith("text/event-stream")
    events = sse_events(response.text)
    names = [name for name, _ in events]
    assert names[:3] == ["message_start", "ping", "content_block_start"]
    assert names[-2:] == ["message_delta", "message_stop"]
    blocks = [data["content_block"] for name, data in events if name == "content_block_start"]
    assert [b["type"] for b in blocks] == ["text", "tool_use"]
    assert blocks[1]["name"] == "Bash" and blocks[1]["id"].startswith("call_t0_")
    text = "".join(d["delta"]["text"] for n, d in events if n == "content_block_delta" and d["index"] == 0)
    args = "".join(d["delta"]["partial_json"] for n, d in events if n == "content_block_delta" and d["index"] == 1)
    assert text == "I will run it."
    assert json.loads(args) == {"command": "echo greeted", "description": "greet"}
    assert len([n for n in names if n == "content_block_delta"]) > 2  # word by word, not in one piece
    start = events[0][1]["message"]
    delta = events[-2][1]
    assert start["role"] == "assistant" and start["model"] == "cl" and start["usage"]["input_tokens"] > 0
    assert delta["delta"]["stop_reason"] == "tool_use" and delta["usage"]["output_tokens"] > 0
    assert server.requests[0].agent == "cl" and server.requests[0].turn == 0


async def test_messages_tool_result_chooses_the_next_turn(serve) -> None:
    server = await serve(CLAUDE_TURNS)
    first = sse_events(
        (await post_messages(server, anthropic_body("cl", [{"role": "user", "content": "go"}], stream=True))).text
    )
    call_id = next(d["content_block"]["id"] for n, d in first if n == "content_block_start" and d["index"] == 1)
    said = {"type": "text", "text": "I will run it."}
    call = {"type": "tool_use", "id": call_id, "name": "Bash", "input": {"command": "echo greeted"}}

    def conversation(result: dict[str, Any]) -> list[dict[str, Any]]:
        return [
            {"role": "user", "content": [{"type": "text", "text": "go"}]},
            {"role": "assistant", "content": [said, call]},
            {"role": "user", "content": [result]},
        ]

    ran = {"type": "tool_result", "tool_use_id": call_id, "content": "greeted\n", "is_error": False}
    response = await post_messages(server, anthropic_body("cl", conversation(ran)))
    assert response.json()["content"] == [{"type": "text", "text": "It printed greeted."}]
    assert response.json()["stop_reason"] == "end_turn"
    refused = {
        "type": "tool_result",
        "tool_use_id": call_id,
        "content": [{"type": "text", "text": "The engineer denied this call."}],
        "is_error": True,
    }
    response = await post_messages(server, anthropic_body("cl", conversation(refused)))
    assert response.json()["content"][0]["text"] == "Not run: The engineer denied this call."
    assert server.requests[-1].tool_outputs() == ["The engineer denied this call."]
    assert [r.turn for r in server.requests] == [0, 1, 2]


async def test_messages_faults_in_anthropic_shapes(serve) -> None:
    server = await serve(
        {
            "agents": [
                {"name": "busy", "turns": [{"say": "x"}], "faults": [{"kind": "429", "retry_after": 2}]},
                {"name": "down", "turns": [{"say": "x"}], "faults": [{"kind": "500", "status": 529}]},
                {"name": "cut", "turns": [{"say": "one two three four five", "fault": {"kind": "cut", "after": 4}}]},
                {"name": "bad", "turns": [{"say": "one two three", "fault": {"kind": "malformed", "after": 2}}]},
            ]
        }
    )
    hi = [{"role": "user", "content": "hi"}]
    busy = await post_messages(server, anthropic_body("busy", hi, stream=True))
    assert busy.status_code == 429 and busy.headers["retry-after"] == "2"
    assert busy.json()["type"] == "error" and busy.json()["error"]["type"] == "rate_limit_error"
    down = await post_messages(server, anthropic_body("down", hi, stream=True))
    assert down.status_code == 529 and down.json()["error"]["type"] == "overloaded_error"
    with pytest.raises(httpx2.RemoteProtocolError):
        await post_messages(server, anthropic_body("cut", hi, stream=True))
    bad = await post_messages(server, anthropic_body("bad", hi, stream=True))
    with pytest.raises(json.JSONDecodeError):
        sse_events(bad.text)
    assert [r.fault for r in server.requests] == ["429", "500", "cut", "malformed"]


async def test_messages_unknown_model_side_job_gets_text_and_agent_loop_gets_404(serve) -> None:
    server = await serve(CLAUDE_TURNS)
    side = await post_messages(
        server, {"model": "claude-haiku", "max_tokens": 50, "messages": [{"role": "user", "content": "title?"}]}
    )
    assert side.status_code == 200 and side.json()["content"] == [{"type": "text", "text": "Done."}]
    wrong = await post_messages(server, anthropic_body("claude-opus", [{"role": "user", "content": "hi"}]))
    assert wrong.status_code == 404
    assert wrong.json()["error"]["type"] == "not_found_error" and "use one of cl" in wrong.json()["error"]["message"]
    assert [(r.model, r.agent) for r in server.requests] == [("claude-haiku", ""), ("claude-opus", "")]


async def test_messages_count_tokens(serve) -> None:
    server = await serve(CLAUDE_TURNS)
    async with httpx2.AsyncClient(base_url=f"http://127.0.0.1:{server.port}", timeout=10) as c:
        body = {"model": "cl", "messages": [{"role": "user", "content": "three small words"}]}
        response = await c.post("/v1/messages/count_tokens", json=body)
    assert response.status_code == 200 and response.json() == {"input_tokens": 3}


async def test_messages_claude_codes_placeholder_for_an_unanswered_turn_is_no_turn(serve) -> None:
    server = await serve(
        {
            "agents": [
                {
                    "name": "cl",
                    "turns": [
                        {"say": "I will run it.", "tool": "Bash", "args": {"command": "true"}},
                        {"when_user_contains": "continue", "say": "Trying again.", "tool": "Bash", "args": {}},
                        {"say": "Out of script."},
                    ],
                }
            ]
        }
    )
    call = {"type": "tool_use", "id": "call_t0_0_abc", "name": "Bash", "input": {"command": "true"}}
    cut_off = {"type": "tool_result", "tool_use_id": "call_t0_0_abc", "content": "[cut off]", "is_error": True}
    conversation = [
        {"role": "user", "content": "go"},
        {"role": "assistant", "content": [{"type": "text", "text": "I will run it."}, call]},
        {"role": "user", "content": [cut_off]},
        {"role": "assistant", "content": [{"type": "text", "text": "No response requested."}]},
        {"role": "user", "content": "Continue where you left off."},
    ]
    response = await post_messages(server, anthropic_body("cl", conversation))
    assert response.json()["content"][0] == {"type": "text", "text": "Trying again."}
    assert server.requests[0].turn == 1
