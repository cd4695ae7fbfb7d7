"""Cost and budgets: what an agent's tokens cost at the [prices] of its model, totals per group and for the
fleet, and whether an agent has reached a budget (its own or the fleet's) before its next model call.

A cost is only ever computed from a price the config gives: where none is known it is None, never 0.

A budget question is an approval like any other (kind "budget"), so it waits, is listed, survives a restart
and is answered with the same keys. Its approval id carries the budget's level, the number of times the budget
had been raised when it was asked (`budget-0`, `fleet-budget-2`): approving it raises that budget to the next
level, so approving the fleet's question in several agents at once still raises the fleet's budget once.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from mc.config import Config, PriceConfig

if TYPE_CHECKING:
    from mc.agent import Agent

#: `ApprovalRequested.kind` of a budget question.
BUDGET_KIND = "budget"
#: `ApprovalRequested.tool` of a budget question: the agent's own budget, or the fleet's.
AGENT_BUDGET = "budget"
FLEET_BUDGET = "fleet budget"
_PREFIX = {AGENT_BUDGET: "budget-", FLEET_BUDGET: "fleet-budget-"}

PER = 1_000_000
"""Prices are per million tokens."""


def budget_approval_id(scope: str, level: int) -> str:
    """The approval id of the budget question of `scope` (AGENT_BUDGET or FLEET_BUDGET) at `level`."""
    return f"{_PREFIX[scope]}{level}"


def budget_level(scope: str, approval_id: str) -> int | None:
    """The level a budget question of `scope` was asked at, from its approval id (None for another id)."""
    prefix = _PREFIX.get(scope, "")
    rest = approval_id[len(prefix) :] if prefix and approval_id.startswith(prefix) else ""
    return int(rest) if rest.isdigit() else None


# -- cost ------------------------------------------------------------------------------------------
def price_of(config: Config, model: str) -> PriceConfig | None:
    """The price the config gives for `model` (exactly that name), or None."""
    return config.prices.get(model) if model else None


def cost_of(config: Config, model: str, input_tokens: int, output_tokens: int) -> float | None:
    """What these tokens cost at the model's price; None when the config gives no price for it."""
    price = price_of(config, model)
    if price is None:
        return None
    return (input_tokens * price.input + output_tokens * price.output) / PER


def agent_cost(agent: Agent, config: Config) -> float | None:
    """What the agent's tokens cost; None until its runner reports usage, and when its model has no price."""
    if not agent.usage_reported:
        return None
    return cost_of(config, agent.model, agent.input_tokens, agent.output_tokens)


@dataclass(frozen=True)
class Totals:
    """The tokens and cost of some agents together."""

    agents: int = 0
    input_tokens: int = 0
    output_tokens: int = 0
    reported: int = 0
    """How many of them reported token usage (the others' tokens are unknown)."""
    cost: float | None = None
    """The sum of the costs that are known; None when none is."""
    unpriced: int = 0
    """How many reported tokens whose model has no price: their cost is missing from `cost`."""

    @property
    def tokens(self) -> int:
        return self.input_tokens + self.output_tokens

    @property
    def cost_complete(self) -> bool:
        """True when `cost` counts every agent that used tokens."""
        return self.unpriced == 0


def totals(agents: Iterable[Agent], config: Config) -> Totals:
    """The tokens in and out and the known cost of these agents together."""
    count = tokens_in = tokens_out = reported = unpriced = 0
    known: list[float] = []
    for agent in agents:
        count += 1
        if not agent.usage_reported:
            continue
        reported += 1
        tokens_in += agent.input_tokens
        tokens_out += agent.output_tokens
        value = agent_cost(agent, config)
        if value is None:
            unpriced += 1
        else:
            known.append(value)
    return Totals(count, tokens_in, tokens_out, reported, sum(known) if known else None, unpriced)


def group_totals(agents: Iterable[Agent], config: Config) -> dict[str, Totals]:
    """Totals per group (agents that share a group name), in the order the groups first appear; agents in no
    group are in none of them."""
    groups: dict[str, list[Agent]] = {}
    for agent in agents:
        if agent.group:
            groups.setdefault(agent.group, []).append(agent)
    return {name: totals(members, config) for name, members in groups.items()}


# -- budgets ---------------------------------------------------------------------------------------
def agent_budget(agent: Agent) -> tuple[int, float]:
    """The agent's budget now (tokens, cost; 0 for none): what it was given, raised once per approval."""
    times = 1 + agent.budget_raises
    return agent.budget_tokens * times, agent.budget_cost * times


def fleet_level(agents: Iterable[Agent]) -> int:
    """How many times the fleet's budget has been raised (each agent keeps the raises it approved)."""
    return max((a.fleet_budget_raises for a in agents), default=0)


def fleet_budget(agents: Iterable[Agent], config: Config) -> tuple[int, float]:
    """The fleet's budget now (tokens, cost; 0 for none): [fleet] budget_tokens / budget_cost, raised once per
    approval."""
    times = 1 + fleet_level(agents)
    return config.fleet.budget_tokens * times, config.fleet.budget_cost * times


def format_cost(value: float) -> str:
    """A cost for people: up to six significant digits, no exponent for the sums budgets deal in."""
    if value >= 1000:
        return f"{value:,.2f}"
    text = f"{value:.6f}".rstrip("0").rstrip(".") if value >= 0.001 else f"{value:.6g}"
    return text or "0"


@dataclass(frozen=True)
class Overrun:
    """A budget an agent has reached: which one, at what level, what was spent and what approving makes of it."""

    scope: str
    """AGENT_BUDGET or FLEET_BUDGET."""
    level: int
    measure: str
    """"tokens" or "cost"."""
    spent: float
    budget: float
    step: float
    """The budget as it was given: approving raises it by this much, once."""

    @property
    def approval_id(self) -> str:
        return budget_approval_id(self.scope, self.level)

    def _amount(self, value: float) -> str:
        return str(int(value)) if self.measure == "tokens" else format_cost(value)

    @property
    def summary(self) -> str:
        """One line: the budget, what was spent, and what approving does."""
        who = "fleet " if self.scope == FLEET_BUDGET else ""
        if self.measure == "tokens":
            said = f"{who}token budget reached: {self._amount(self.spent)} of {self._amount(self.budget)} tokens used"
        else:
            said = f"{who}cost budget reached: {self._amount(self.spent)} of {self._amount(self.budget)} spent"
        if self.scope == FLEET_BUDGET:
            said += " by all agents"
        return f"{said}; approve raises it once by {self._amount(self.step)} to {self._amount(self.budget + self.step)}"

    @property
    def detail(self) -> str:
        whose = "The fleet's" if self.scope == FLEET_BUDGET else "The agent's"
        unit = " tokens" if self.measure == "tokens" else ""
        return "\n".join(
            [
                f"{whose} {'token' if self.measure == 'tokens' else 'cost'} budget is "
                f"{self._amount(self.budget)}{unit}; {self._amount(self.spent)}{unit} "
                f"{'used' if self.measure == 'tokens' else 'spent'} so far.",
                "The agent stopped before its next model call.",
                f"Approve: the budget goes up once by {self._amount(self.step)}{unit}, to "
                f"{self._amount(self.budget + self.step)}{unit}, and the agent goes on.",
                "Deny: the turn ends here (redirect the agent to go on). Kill: the agent ends.",
            ]
        )


def over_budget(agent: Agent, agents: Iterable[Agent], config: Config) -> Overrun | None:
    """The budget the agent has reached (its own first, then the fleet's), or None: what is checked before each
    of its model calls. A cost that is not known (no price) is not counted."""
    tokens, money = agent_budget(agent)
    level = agent.budget_raises
    if tokens and agent.tokens >= tokens:
        return Overrun(AGENT_BUDGET, level, "tokens", agent.tokens, tokens, agent.budget_tokens)
    spent = agent_cost(agent, config)
    if money and spent is not None and spent >= money:
        return Overrun(AGENT_BUDGET, level, "cost", spent, money, agent.budget_cost)
    everyone = list(agents)
    tokens, money = fleet_budget(everyone, config)
    if not (tokens or money):
        return None
    level = fleet_level(everyone)
    total = totals(everyone, config)
    if tokens and total.tokens >= tokens:
        return Overrun(FLEET_BUDGET, level, "tokens", total.tokens, tokens, config.fleet.budget_tokens)
    if money and total.cost is not None and total.cost >= money:
        return Overrun(FLEET_BUDGET, level, "cost", total.cost, money, config.fleet.budget_cost)
    return None
