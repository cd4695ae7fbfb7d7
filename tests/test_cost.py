"""Cost and budgets: tokens in and out as the runner reports them, cost from the [prices] table (none where no
price is known), totals per group and fleet, and budgets that stop an agent before its next model call.

Every agent here is the real built-in runner against the scripted server on 127.0.0.1; the server's request
count is what proves that no model call was made past a budget."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from mc import cost
from mc import events as ev
from mc.config import AgentConfig, ConfigError, PriceConfig, load_config, parse_config
from mc.scripted.server import count_input_tokens
from tests.conftest import fleet_config
from tests.test_cli import missionctl, write_config
from tests.test_fleet import wait_for, write_turn

EXAMPLE = Path(__file__).resolve().parent.parent / "config.example.toml"

#: Four model calls that each write a file, then a last one that ends the turn.
WRITES = [write_turn(f"f{i}.txt", f"{i}\n") for i in range(4)] + [{"say": "Done."}]


def usages(fleet: Any, name: str) -> list[ev.Usage]:
    """The Usage events in the agent's log on disk, one per model call, in order."""
    return [e for e in fleet.store.iter_events(fleet.get(name).id) if isinstance(e, ev.Usage)]


def spent_per_call(fleet: Any, name: str) -> list[int]:
    return [u.input_tokens + u.output_tokens for u in usages(fleet, name)]


async def question(fleet: Any, name: str, approval_id: str) -> ev.ApprovalRequested:
    """Wait until the agent waits with the pending question `approval_id`, and return it."""
    agent = fleet.get(name)
    await wait_for(lambda: approval_id in agent.pending and agent.status == "waiting", what=approval_id)
    return agent.pending[approval_id]


# -- budgets ---------------------------------------------------------------------------------------
async def test_a_token_budget_stops_the_agent_before_its_next_model_call(repo, scripted, fleet_factory) -> None:
    server = scripted({"agents": [{"name": "w", "turns": WRITES}]})
    spec = AgentConfig(name="w", task="write four files", model="w", policy="never", budget_tokens=300)
    fleet = await fleet_factory(fleet_config(repo, server, [spec]))
    await fleet.spawn_configured()
    asked = await question(fleet, "w", "budget-0")
    agent = fleet.get("w")
    # one call was made, it crossed the budget, and the next one waits for the engineer
    calls = spent_per_call(fleet, "w")
    assert len(server.requests_for("w")) == len(calls) == 1
    assert agent.tokens == calls[0] >= 300
    assert asked.kind == "budget" and asked.tool == cost.AGENT_BUDGET
    assert f"{agent.tokens} of 300 tokens" in asked.summary and "budget" in asked.summary
    assert "600" in asked.summary  # what approving makes of it
    assert agent.status_reason.startswith("budget: ")
    assert fleet.needing_decision() == [agent]

    # approve raises the budget once by the same amount: the agent goes on until it reaches 600
    await fleet.approve("w")
    asked = await question(fleet, "w", "budget-1")
    calls = spent_per_call(fleet, "w")
    assert len(server.requests_for("w")) == len(calls) >= 2
    assert sum(calls[:-1]) < 600 <= sum(calls)  # every call began under the budget; none began past it
    assert f"{agent.tokens} of 600 tokens" in asked.summary and "900" in asked.summary
    assert agent.budget_raises == 1
    assert cost.agent_budget(agent) == (600, 0.0)

    # kill ends it: no further model call
    made = len(server.requests_for("w"))
    await fleet.kill("w")
    assert agent.status == "killed" and not agent.pending
    assert await fleet.wait_settled(10)
    assert len(server.requests_for("w")) == made


async def test_approve_all_on_a_budget_question_raises_it_once_and_remembers_nothing(
    repo, scripted, fleet_factory
) -> None:
    server = scripted({"agents": [{"name": "w", "turns": WRITES}]})
    spec = AgentConfig(name="w", task="write four files", model="w", policy="never", budget_tokens=300)
    fleet = await fleet_factory(fleet_config(repo, server, [spec]))
    await fleet.spawn_configured()
    await question(fleet, "w", "budget-0")
    await fleet.approve("w", remember=True)
    await question(fleet, "w", "budget-1")
    agent = fleet.get("w")
    assert agent.budget_raises == 1 and agent.remembered == set()
    resolved = [e for e in fleet.store.iter_events(agent.id) if isinstance(e, ev.ApprovalResolved)]
    assert [(e.approval_id, e.decision) for e in resolved] == [("budget-0", "approve")]


async def test_deny_of_a_budget_question_ends_the_turn_without_a_model_call(repo, scripted, fleet_factory) -> None:
    server = scripted({"agents": [{"name": "w", "turns": WRITES}]})
    spec = AgentConfig(name="w", task="write four files", model="w", policy="never", budget_tokens=300)
    fleet = await fleet_factory(fleet_config(repo, server, [spec]))
    await fleet.spawn_configured()
    await question(fleet, "w", "budget-0")
    await fleet.deny("w")
    assert await fleet.wait_settled(10)
    agent = fleet.get("w")
    assert agent.status == "idle" and "budget" in agent.status_reason
    assert len(server.requests_for("w")) == 1 and agent.budget_raises == 0


async def test_a_budget_question_comes_back_after_a_restart(repo, scripted, fleet_factory) -> None:
    server = scripted({"agents": [{"name": "w", "turns": WRITES}]})
    spec = AgentConfig(name="w", task="write four files", model="w", policy="never", budget_tokens=300)
    cfg = fleet_config(repo, server, [spec])
    fleet = await fleet_factory(cfg)
    await fleet.spawn_configured()
    before = await question(fleet, "w", "budget-0")
    await fleet.close()

    fleet = await fleet_factory(fleet_config(repo, server))  # the budget is the agent's own, not the config's
    agent = fleet.get("w")
    assert agent.status == "waiting" and list(agent.pending) == ["budget-0"]
    assert agent.pending["budget-0"].summary == before.summary
    assert len(server.requests_for("w")) == 1  # the restart made no model call
    await fleet.approve("w")
    await question(fleet, "w", "budget-1")
    calls = spent_per_call(fleet, "w")
    assert len(server.requests_for("w")) == len(calls) >= 2
    assert sum(calls[:-1]) < 600 <= sum(calls)


async def test_a_cost_budget_stops_the_agent_at_the_price_of_what_it_used(repo, scripted, fleet_factory) -> None:
    server = scripted({"agents": [{"name": "w", "turns": WRITES}]})
    spec = AgentConfig(name="w", task="write four files", model="w", policy="never", budget_cost=0.0005)
    cfg = fleet_config(repo, server, [spec])
    cfg.prices = {"w": PriceConfig(input=1.0, output=4.0)}
    fleet = await fleet_factory(cfg)
    await fleet.spawn_configured()
    asked = await question(fleet, "w", "budget-0")
    used = usages(fleet, "w")
    costs = [(u.input_tokens * 1.0 + u.output_tokens * 4.0) / 1_000_000 for u in used]
    assert len(server.requests_for("w")) == len(used) >= 1
    assert sum(costs[:-1]) < 0.0005 <= sum(costs)
    assert cost.agent_cost(fleet.get("w"), cfg) == pytest.approx(sum(costs))
    assert "cost budget" in asked.summary and "of 0.0005" in asked.summary
    await fleet.kill("w")


async def test_a_fleet_budget_stops_every_agent_and_one_approval_raises_it_once(repo, scripted, fleet_factory) -> None:
    server = scripted({"agents": [{"name": n, "turns": WRITES} for n in ("a", "b", "c")]})
    agents = [AgentConfig(name=n, task="write four files", model=n, policy="never") for n in ("a", "b", "c")]
    cfg = fleet_config(repo, server, agents[:1])
    fleet = await fleet_factory(cfg)
    await fleet.spawn_configured()
    assert await fleet.wait_settled(30)
    used = fleet.get("a").tokens
    assert used > 0
    cfg.fleet.budget_tokens = used  # reached already: the next agents stop before their first call
    await fleet.spawn(agents[1])
    await fleet.spawn(agents[2])
    b = await question(fleet, "b", "fleet-budget-0")
    c = await question(fleet, "c", "fleet-budget-0")
    assert server.requests_for("b") == [] and server.requests_for("c") == []
    assert b.tool == c.tool == cost.FLEET_BUDGET
    assert f"{used} of {used} tokens" in b.summary and "fleet" in b.summary
    assert cost.fleet_budget(fleet.list(), cfg) == (used, 0.0)

    await fleet.approve("b")  # raises the fleet's budget once, for every agent that waited on it
    assert cost.fleet_budget(fleet.list(), cfg) == (2 * used, 0.0)
    assert "fleet-budget-0" not in fleet.get("c").pending
    assert "fleet-budget-0" not in fleet.get("b").pending
    await wait_for(lambda: server.requests_for("b") and server.requests_for("c"), what="both agents going on")
    for name in ("b", "c"):
        await fleet.kill(name)
    assert cost.fleet_budget(fleet.list(), cfg)[0] == 2 * used


# -- cost and totals -------------------------------------------------------------------------------
async def test_cost_is_exact_where_a_price_is_known_and_none_where_not(repo, scripted, fleet_factory, tmp_path) -> None:
    two = [write_turn("x.txt", "x\n"), {"say": "Done."}]
    server = scripted({"agents": [{"name": n, "turns": two} for n in ("w", "u", "v")]})
    agents = (
        '[[agents]]\nname = "w"\ntask = "write x"\nmodel = "w"\npolicy = "never"\ngroup = "best"\n'
        '[[agents]]\nname = "u"\ntask = "write x"\nmodel = "u"\npolicy = "never"\ngroup = "best"\n'
        '[[agents]]\nname = "v"\ntask = "write x"\nmodel = "v"\npolicy = "never"\n'
        '[prices]\nw = { input = 1.25, output = 10.0 }\n[prices."v"]\ninput = 0.5\noutput = 2\n'
    )
    config = write_config(tmp_path, repo, server, agents)
    cfg = load_config(config)
    fleet = await fleet_factory(cfg)
    await fleet.spawn_configured()
    assert await fleet.wait_settled(30)
    w, u, v = (fleet.get(n) for n in ("w", "u", "v"))

    # tokens in and out as the runner reported them: what the scripted server counted
    for agent in (w, u, v):
        bodies = [r.body for r in server.requests_for(agent.name)]
        assert agent.usage_reported and agent.input_tokens == sum(count_input_tokens(b) for b in bodies)
        assert agent.output_tokens > 0
    w_cost = (w.input_tokens * 1.25 + w.output_tokens * 10.0) / 1_000_000
    v_cost = (v.input_tokens * 0.5 + v.output_tokens * 2.0) / 1_000_000
    assert cost.agent_cost(w, cfg) == pytest.approx(w_cost)
    assert cost.agent_cost(v, cfg) == pytest.approx(v_cost)
    assert cost.agent_cost(u, cfg) is None  # no price for "u": no cost, never 0

    total = cost.totals(fleet.list(), cfg)
    assert (total.agents, total.input_tokens, total.output_tokens) == (
        3,
        w.input_tokens + u.input_tokens + v.input_tokens,
        w.output_tokens + u.output_tokens + v.output_tokens,
    )
    assert total.tokens == w.tokens + u.tokens + v.tokens
    assert total.cost == pytest.approx(w_cost + v_cost) and total.unpriced == 1 and not total.cost_complete
    groups = cost.group_totals(fleet.list(), cfg)
    assert list(groups) == ["best"]
    assert groups["best"].agents == 2 and groups["best"].tokens == w.tokens + u.tokens
    assert groups["best"].cost == pytest.approx(w_cost) and groups["best"].unpriced == 1
    assert w.group == "best" and v.group == ""

    # ls --json: tokens in and out, and the cost where it is known
    await fleet.close()
    shown = missionctl("ls", "--json", "--config", str(config))
    assert shown.returncode == 0, shown.stderr
    rows = {r["name"]: r for r in json.loads(shown.stdout)}
    assert (rows["w"]["input_tokens"], rows["w"]["output_tokens"]) == (w.input_tokens, w.output_tokens)
    assert rows["w"]["cost"] == pytest.approx(w_cost) and rows["v"]["cost"] == pytest.approx(v_cost)
    assert rows["u"]["cost"] is None and rows["u"]["tokens"] == u.tokens
    assert rows["w"]["group"] == "best" and rows["v"]["group"] == ""


def test_no_cost_before_any_usage_is_reported() -> None:
    from mc.agent import Agent

    cfg = parse_config('[model]\nmodel = "m"\n[prices]\nm = { input = 1.0, output = 1.0 }\n')
    agent = Agent(id="a", model="m")
    assert cost.agent_cost(agent, cfg) is None  # tokens unknown: cost unknown
    assert cost.totals([agent], cfg).cost is None
    agent.apply(ev.Usage(agent="a", input_tokens=0, output_tokens=0))
    assert cost.agent_cost(agent, cfg) == 0.0  # reported as nothing used: that costs nothing


# -- config ----------------------------------------------------------------------------------------
def test_prices_and_budgets_are_read_from_the_config() -> None:
    cfg = parse_config(
        '[prices]\n"gpt-5-mini" = { input = 0.25, output = 2.0 }\n'
        "[fleet]\nbudget_tokens = 1000000\nbudget_cost = 5.0\n"
        '[[agents]]\nname = "a"\ntask = "t"\ngroup = "g"\nbudget_tokens = 20000\nbudget_cost = 0.5\n'
    )
    assert cfg.prices == {"gpt-5-mini": PriceConfig(input=0.25, output=2.0)}
    assert (cfg.fleet.budget_tokens, cfg.fleet.budget_cost) == (1_000_000, 5.0)
    agent = cfg.agents[0]
    assert (agent.group, agent.budget_tokens, agent.budget_cost) == ("g", 20000, 0.5)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("[prices]\nm = { input = 1.0 }\n", "x.toml:2: [prices] m is missing its output price"),
        ("[prices]\nm = { input = -1.0, output = 1.0 }\n", "x.toml:2: [prices] m input = -1.0: must be"),
        ('[prices]\nm = { input = "1", output = 1.0 }\n', "x.toml:2: [prices] m input = '1': must be a number"),
        ("[prices]\nm = { input = 1.0, output = 1.0, cached = 0.1 }\n", "unknown key [prices] m cached"),
        ("[prices]\nm = 3\n", "x.toml:2: [prices] m = 3: must be a table"),
        ('[prices."m"]\ninput = 1.0\n', "x.toml:1: [prices] m is missing its output price"),
        ("[fleet]\nbudget_tokens = -5\n", "x.toml:2: [fleet] budget_tokens = -5: must be"),
        ("[fleet]\nbudget_tokens = 1.5\n", "must be a whole number"),
        ('[[agents]]\nname = "a"\ntask = "t"\nbudget_cost = -1\n', "x.toml:4: [[agents]] #1 budget_cost = -1"),
        (
            '[model]\nmodel = "m"\n[[agents]]\nname = "a"\ntask = "t"\nbudget_cost = 1.0\n',
            "x.toml:6: [[agents]] 'a' budget_cost = 1.0: no price is known for its model \"m\"",
        ),
        (
            '[[agents]]\nname = "a"\ntask = "t"\nrunner = "codex"\nbudget_cost = 1.0\n',
            "set model = ",
        ),
        ('[model]\nmodel = "m"\n[fleet]\nbudget_cost = 1.0\n', "x.toml:4: [fleet] budget_cost = 1.0: no price"),
    ],
)
def test_bad_prices_and_budgets_give_one_line(text: str, expected: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_config(text, "x.toml")
    message = str(info.value)
    assert expected in message
    assert "\n" not in message


def test_the_example_documents_prices_and_budgets() -> None:
    cfg = load_config(EXAMPLE)
    text = EXAMPLE.read_text()
    assert cfg.prices, "the example has a [prices] table"
    assert all(p.input >= 0 and p.output >= 0 for p in cfg.prices.values())
    from dataclasses import fields

    for f in fields(cfg.fleet):
        assert f"{f.name} =" in text, f.name
    for name in ("group", "budget_tokens", "budget_cost"):
        assert f"{name} =" in text, name
    assert "[prices]" in text and "input =" in text and "output =" in text
