"""An example policy family for Isekai: ``deny_agents``.

    policies:
      no_bots: {type: deny_agents, agents: [curl, python-requests], tag: checked}

A request whose ``User-Agent`` contains one of ``agents`` (case-insensitive) is answered 403
with a JSON body; every other response of the route gets ``X-Agent-Check: <tag>``. The
instance counts what it refused (``refused``) and what it let through (``passed``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from isekai import PolicyFamily, Response, item, setting


@dataclass(frozen=True, slots=True)
class DenyAgentsConfig:
    """The YAML keys of a ``deny_agents`` policy (besides ``type``)."""

    family: ClassVar[str] = "deny_agents"

    agents: tuple[str, ...] = setting(
        "list",
        "Refuse requests whose User-Agent contains one of these (case-insensitive).",
        item=item("string"),
        empty="needs at least one agent",
    )
    tag: str = setting("string", "Value of the X-Agent-Check response header.", default="ok")


class DenyAgents:
    """The policy: a sync request phase, a response phase and a completion phase."""

    def __init__(self, config: DenyAgentsConfig) -> None:
        self.agents = tuple(agent.lower() for agent in config.agents)
        self.tag = config.tag
        self.refused = 0
        self.passed = 0

    def on_request(self, request):
        agent = (request.header("user-agent") or "").lower()
        if any(bad in agent for bad in self.agents):
            self.refused += 1
            request.ctx["agent_refused"] = True
            return Response.json(403, {"success": False, "error": "this client is not allowed"})
        return None

    def on_response(self, request, head):
        head.set_header("X-Agent-Check", self.tag)

    def on_complete(self, request):
        if not request.ctx.get("agent_refused"):
            self.passed += 1


family = PolicyFamily(type="deny_agents", config=DenyAgentsConfig, policy=DenyAgents)
