"""The tool client: times each tool call once, reports it once, records it once.

Like Locust's ``examples/custom_xmlrpc_client``: one ``events.request`` per call with
``request_type`` = tool, ``name`` = strategy, ``response_time`` = the whole call including
retries and backoff, ``exception`` only for a final failure, and a ``context`` holding the
outcome, attempts and SQLSTATEs. Every call also becomes one operation record in the history.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from locust.env import Environment

from toolclash.history import FAIL, OK, HistoryWriter, make_op
from toolclash.tools import DONE, Call
from users.runtime import Runtime

BUSINESS_REJECTIONS = frozenset({"insufficient-funds"})
"""Correct business answers in every scenario (each scenario adds its own ``rejections``)."""


class ToolFailure(Exception):
    """A call that ended ``fail`` or ``unknown`` (the message says why)."""


class ToolClient:
    def __init__(self, environment: Environment, runtime: Runtime, agent: str, *,
                 rejections: frozenset[str] = frozenset(), after: Callable[[Call], None] | None = None) -> None:
        """*rejections*: fail reasons that are correct business answers (counted as ``calls_rejected`` too);
        *after*: called with every finished call (the agent's circuit breaker)."""
        self.environment = environment
        self.rejections = rejections | BUSINESS_REJECTIONS
        self.after = after
        self.runtime = runtime
        self.agent = agent
        self.policy = runtime.policy()
        self.rng = runtime.rng()
        history = runtime.history
        if history is None:
            raise RuntimeError("no history writer: the run has not started in this process")
        self.history: HistoryWriter = history

    def call(self, tool: str, strategy: str, args: dict[str, Any], fn: Callable[[Call], Any], *,
             report: bool = True) -> Call:
        """Run *fn(call)* as one tool call; report and record it whatever happens.

        *report* False: the call's requests are reported by Locust's own HTTP client, one event each (an
        HTTP target's endpoints in Locust's statistics); the call is still recorded and counted once."""
        call = Call(op_id=self.history.new_op_id(), policy=self.policy, rng=self.rng)
        invoke_ts = time.time()
        start = time.perf_counter()
        recorded = False
        try:
            try:
                fn(call)
            except Exception as exc:  # noqa: BLE001 - an unexpected error: effect unknown, say so
                call.finish("unknown", f"error: {type(exc).__name__}: {exc}"[:200], type(exc).__name__)
            elapsed_ms = (time.perf_counter() - start) * 1000.0
            self._record(call, tool, strategy, args, invoke_ts, invoke_ts + elapsed_ms / 1000.0)
            recorded = True
        except BaseException:  # GreenletExit at stop, KeyboardInterrupt: record the call, go on stopping
            if not recorded:  # also when it came after the tool returned: the outcome it reached is recorded
                if call.phase != DONE:
                    call.interrupted()  # cut short in flight: in doubt
                self._record(call, tool, strategy, args, invoke_ts, time.time())
                self.runtime.count(call)
            raise
        attempts = call.attempts
        self.runtime.count(call)
        if call.outcome == FAIL and call.reason in self.rejections:
            self.runtime.bump("calls_rejected")
        if self.after is not None:
            self.after(call)
        if not report:
            return call
        self.environment.events.request.fire(
            request_type=tool, name=strategy, response_time=elapsed_ms, response_length=0,
            exception=None if call.outcome == OK else ToolFailure(f"{call.outcome}: {call.reason}"),
            context={"op_id": call.op_id, "agent": self.agent, "outcome": call.outcome, "reason": call.reason,
                     "attempts": attempts.count, "retries": dict(attempts.retries), "sqlstates": attempts.sqlstates,
                     "backoff_ms": round(attempts.backoff_s * 1000.0, 3)},
        )
        return call

    def _record(self, call: Call, tool: str, strategy: str, args: dict[str, Any], invoke_ts: float,
                complete_ts: float) -> None:
        attempts = call.attempts
        result = dict(call.result)
        if attempts.retries:
            result["retries"] = dict(attempts.retries)
            result["backoff_s"] = round(attempts.backoff_s, 6)
        if attempts.sqlstates:
            result["sqlstates"] = attempts.sqlstates
        self.history.record(make_op(
            run_id=self.history.run_id, op_id=call.op_id, process=self.history.process, agent=self.agent, tool=tool,
            strategy=strategy, args=args, invoke_ts=invoke_ts, complete_ts=complete_ts, outcome=call.outcome or "",
            attempts=attempts.count, error_class=call.error_class, reason=call.reason, result=result))
