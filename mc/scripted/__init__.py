"""A real OpenAI-compatible HTTP server on 127.0.0.1 that plays scripted scenarios (tests and demos)."""

from mc.scripted.scenario import (
    Agent,
    Call,
    Fault,
    Scenario,
    ScenarioError,
    Turn,
    demo_scenario_path,
    load_scenario,
    scenario_from_dict,
)
from mc.scripted.server import RecordedRequest, ScriptedServer, ThreadedServer, main, serve_in_thread

__all__ = [
    "Agent",
    "Call",
    "Fault",
    "RecordedRequest",
    "Scenario",
    "ScenarioError",
    "ScriptedServer",
    "ThreadedServer",
    "Turn",
    "demo_scenario_path",
    "load_scenario",
    "main",
    "scenario_from_dict",
    "serve_in_thread",
]
