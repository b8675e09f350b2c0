"""Workspace agents: each holds one connection and changes a shared workspace through its tools.

An agent works in *tasks* of a few calls that share one correlation id (its conversation); each call
is one of: upload a file (metadata), set a configuration key, grant or revoke a permission (commands,
appended as events), or query the workspace (read side: projections only). Projectors do not run here:
the master starts them (``toolclash.tools.workspace.start``) and drains them at the end (``finish``).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from locust import task

from toolclash.tools import Call
from toolclash.tools.workspace import PERMS, WorkspaceTool, sha256_of
from users.agent import PgAgent

CALLS_PER_TASK = 5


class WorkspaceAgent(PgAgent):
    """An AI agent sharing a workspace with others: uploads, config changes, grants, revokes, queries."""

    abstract = False

    SCENARIO = "workspace"

    def __init__(self, environment: Any) -> None:
        super().__init__(environment)
        self.calls = 0

    def make_tool(self, conn: Any) -> Any:
        return WorkspaceTool(conn, agent=self.agent, strategy=self.strategy,
                             think_ms=self.settings.tool_think_ms, fault=self.fault, rng=self.rng)

    def next_call(self, tool: WorkspaceTool) -> tuple[str, dict[str, Any], Callable[[Call], Call]]:
        """The next tool call: its name, its recorded arguments and how to run it."""
        o, rng = self.opts, self.rng
        ws = rng.randint(1, o.workspaces)
        if rng.random() < o.query_share:
            return "query_workspace", {"workspace": ws}, lambda c: tool.query(c, ws)
        corr = f"{self.agent}-t{self.calls // CALLS_PER_TASK}"
        if rng.random() < o.permission_share:
            principal, perm = f"user-{rng.randint(1, o.principals)}", rng.choice(PERMS)
            name = rng.choice(("grant", "revoke"))
            fn = tool.grant if name == "grant" else tool.revoke
            return name, {"workspace": ws, "principal": principal, "perm": perm, "correlation_id": corr}, \
                lambda c: fn(c, ws, principal, perm, corr)
        if rng.random() < 0.5:
            path, size = f"/files/{rng.randint(1, o.paths)}.txt", rng.randint(1, 1 << 20)
            sha = sha256_of(f"{path}:{size}:{self.agent}:{self.calls}")
            return "upload_file", {"workspace": ws, "path": path, "size": size, "sha256": sha,
                                   "correlation_id": corr}, lambda c: tool.upload_file(c, ws, path, size, sha, corr)
        key, value = f"key-{rng.randint(1, o.config_keys)}", {"by": self.agent, "n": self.calls}
        return "set_config", {"workspace": ws, "key": key, "value": value, "correlation_id": corr}, \
            lambda c: tool.set_config(c, ws, key, value, corr)

    @task
    def act(self) -> None:
        if not self.connected():
            return
        assert self.tool is not None
        self.calls += 1
        name, args, fn = self.next_call(self.tool)
        self.client.call(name, self.strategy, args, fn)
