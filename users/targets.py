"""Agents pointed at your platform (``--target``): each tool call becomes an HTTP request, SQL statements, or a call
of your client module, and is recorded as one operation like any other.

* :class:`HttpDriver` — Locust's own HTTP client (``FastHttpSession``, the client of ``FastHttpUser``) sends the
  request, so Locust's statistics, charts and failure table list the platform's endpoints; each request is
  reported once, by Locust's client, and the call is recorded once (``ToolClient.call(..., report=False)``).
  The op id travels as an idempotency key. A refused connection is a ``fail`` (nothing was sent); a timeout, a
  connection lost after sending and a 502/503/504 leave the call in doubt (``unknown``) and are retried (same
  op id) while the file's ``tries`` allow; a later definite answer decides.
* :class:`SqlDriver` — the statements run in one transaction on the agent's own connection, through
  :func:`toolclash.tools.transact` (isolation level, retries of serialization failures and deadlocks).
* :class:`PythonDriver` — your ``Client.invoke``; ``Rejected``/``NotApplied`` are ``fail``, any other
  exception leaves the call in doubt.
"""

from __future__ import annotations

import socket
import time
from typing import Any

from locust.contrib.fasthttp import FastHttpSession
from psycopg2.extensions import (
    ISOLATION_LEVEL_READ_COMMITTED,
    ISOLATION_LEVEL_REPEATABLE_READ,
    ISOLATION_LEVEL_SERIALIZABLE,
)
from psycopg2.extras import Json

from toolclash.history import FAIL, OK, UNKNOWN
from toolclash.targets import FileTarget, NotApplied, PythonTarget, Rejected
from toolclash.targets.spec import HttpOp, SqlOp, render_body, render_text
from toolclash.tools import STATEMENT, Call, Reject, transact

_ISOLATION = {"read_committed": ISOLATION_LEVEL_READ_COMMITTED, "repeatable_read": ISOLATION_LEVEL_REPEATABLE_READ,
              "serializable": ISOLATION_LEVEL_SERIALIZABLE}

NOT_SENT = (ConnectionRefusedError, socket.gaierror)
"""Errors that mean the request never reached the platform: nothing can have been applied."""


class Driver:
    uses_connection = False
    """Whether the agent keeps a PostgreSQL connection for it (``self.conn`` of a :class:`~users.agent.PgAgent`)."""

    def __init__(self, agent: Any) -> None:
        self.agent = agent

    def call(self, tool: str, args: dict[str, Any]) -> Call:
        raise NotImplementedError

    def close(self) -> None:
        """Release what the driver holds (the agent stops)."""


def make_driver(agent: Any) -> Driver:
    target = agent.settings.target_spec
    if isinstance(target, PythonTarget):
        return PythonDriver(agent, target)
    assert isinstance(target, FileTarget)
    return HttpDriver(agent, target) if target.kind == "http" else SqlDriver(agent, target)


def _values(agent: Any, call: Call, args: dict[str, Any]) -> dict[str, Any]:
    return {"op_id": call.op_id, "agent": agent.agent, **args}


class HttpDriver(Driver):
    def __init__(self, agent: Any, target: FileTarget) -> None:
        super().__init__(agent)
        self.target = target
        self.ops = target.scenarios[agent.SCENARIO].operations
        self.headers = {tool: {**target.headers, **op.headers} for tool, op in self.ops.items()
                        if isinstance(op, HttpOp)}
        self.names = {tool: f"{op.method} {op.path}" for tool, op in self.ops.items() if isinstance(op, HttpOp)}
        """Locust's request name: the method and the path template (one row per endpoint, not per account)."""
        self.session = FastHttpSession(target.base_url, request_event=agent.environment.events.request, user=None,
                                       network_timeout=target.timeout_s, connection_timeout=target.timeout_s,
                                       max_retries=0, insecure=False)

    def call(self, tool: str, args: dict[str, Any]) -> Call:
        op = self.ops[tool]
        assert isinstance(op, HttpOp)
        return self.agent.client.call(tool, self.target.kind, args, lambda call: self._send(tool, op, call, args),
                                      report=False)

    def _send(self, tool: str, op: HttpOp, call: Call, args: dict[str, Any]) -> Call:
        values = _values(self.agent, call, args)
        path = render_text(op.path, values, quote=True)
        headers = {k: render_text(v, values) for k, v in self.headers[tool].items()}
        if self.target.idempotency_header:
            headers[self.target.idempotency_header] = call.op_id
        body = render_body(op.json, values) if op.json is not None else None
        name = self.names[tool]
        doubt = ""
        for attempt in range(1, self.target.tries + 1):
            call.attempts.count = attempt
            call.phase = STATEMENT
            context = {"op_id": call.op_id, "agent": self.agent.agent, "attempt": attempt}
            with self.session.request(op.method, path, name=name, headers=headers, json=body, catch_response=True,
                                      context=context) as resp:
                outcome, reason, status = self._outcome(op, resp)
                context["outcome"] = outcome
                if outcome == OK:
                    resp.success()
                else:
                    resp.failure(f"{outcome}: {reason}")
            if outcome == OK or (outcome == FAIL and reason != "not-sent"):
                result: dict[str, Any] = {"status": status}
                if doubt:
                    result["after_in_doubt"] = doubt  # an earlier attempt with the same op id was in doubt
                return call.finish(outcome, reason or None, None if outcome == OK else f"http-{status}", **result)
            if outcome == UNKNOWN:
                doubt = reason
            if attempt < self.target.tries:
                time.sleep(call.policy.backoff(attempt, call.rng))
        if doubt:  # an attempt may have been applied; nothing answered for sure since
            return call.finish(UNKNOWN, doubt if reason == doubt else f"{doubt}-then-{reason}", "in-doubt")
        return call.finish(FAIL, "not-sent", "connection-refused")

    def close(self) -> None:
        self.session.client.close()  # its keep-alive connections to the platform

    @staticmethod
    def _outcome(op: HttpOp, resp: Any) -> tuple[str, str, int]:
        status = int(getattr(resp, "status_code", 0) or 0)
        error = getattr(resp, "error", None)
        if status == 0:
            if isinstance(error, NOT_SENT):
                return FAIL, "not-sent", 0
            if isinstance(error, TimeoutError | socket.timeout) or "timed out" in str(error).lower() or \
                    type(error).__name__ == "Timeout":
                return UNKNOWN, "timeout", 0
            return UNKNOWN, f"connection-lost: {type(error).__name__}", 0
        body: Any = None
        if status not in op.ok and op.reason_field:  # the answer's body names the reason
            try:
                body = resp.json() if resp.content else None
            except Exception:  # noqa: BLE001 - not JSON: the status decides
                body = None
        outcome, reason = op.outcome(status, body)
        return outcome, reason, status


class SqlDriver(Driver):
    uses_connection = True

    def __init__(self, agent: Any, target: FileTarget) -> None:
        super().__init__(agent)
        self.target = target
        self.ops = target.scenarios[agent.SCENARIO].operations

    def call(self, tool: str, args: dict[str, Any]) -> Call:
        op = self.ops[tool]
        assert isinstance(op, SqlOp)
        conn = self.agent.conn

        def run(call: Call) -> Call:
            values = _values(self.agent, call, args)

            def body(cur: Any) -> dict[str, Any]:
                found: dict[str, Any] = {}
                for i, step in enumerate(op.steps, 1):
                    cur.execute(step.sql, {**values, **found})
                    if step.returns:
                        row = cur.fetchone()
                        if row is None:
                            raise Reject(step.empty or f"no-row-from-step-{i}")
                        found.update((k, Json(v) if isinstance(v, dict | list) else v)
                                     for k, v in zip(step.returns, row, strict=False))
                return {k: v if isinstance(v, int | float | str | bool) or v is None else str(getattr(v, "adapted", v))
                        for k, v in found.items()}

            return transact(conn, call, body, isolation=_ISOLATION[op.isolation])

        return self.agent.client.call(tool, self.target.kind, args, run)


class PythonDriver(Driver):
    def __init__(self, agent: Any, target: PythonTarget) -> None:
        super().__init__(agent)
        self.client = target.module.Client(agent.agent, dict(vars(agent.opts)))

    def call(self, tool: str, args: dict[str, Any]) -> Call:
        def run(call: Call) -> Call:
            call.attempts.count = 1
            call.phase = STATEMENT
            try:
                result = self.client.invoke(tool, call.op_id, dict(args))
            except Rejected as exc:
                return call.finish(FAIL, exc.reason, "rejected")
            except NotApplied as exc:
                return call.finish(FAIL, exc.reason, "not-applied")
            return call.finish(OK, **(dict(result) if result else {}))

        return self.agent.client.call(tool, "python", args, run)

    def close(self) -> None:
        close = getattr(self.client, "close", None)
        if callable(close):
            close()
