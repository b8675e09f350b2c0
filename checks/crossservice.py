"""Checks of the crossservice scenario: all-or-nothing across main, auth and ClickHouse.

Inputs: the ``grant_tool_access`` operations of the history and the final state captured by
:func:`toolclash.tools.crossservice.snapshot` — main (accounts, debits, refunds, saga states, the 2PC
decision log, the outbox), auth (grants), prepared transactions of both servers, and ClickHouse's
deduplicated events (``FINAL``) after the relay drained.

Per operation id the three stores must agree: either the debit (main), the grant (auth) and the usage
event (ClickHouse) each exist exactly once — *committed* — or none does — *none* — or, for a saga, the
debit was refunded and the grant revoked, with a refund event next to the usage event — *compensated*.
``unknown`` operations are resolved by reading the stores; evidence names the op id and the store
that disagrees.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping
from typing import Any

from checks import UNKNOWN, CheckResult, Checks, Evidence, result, run_checks
from checks.gates import percentile
from checks.plotting import PlotInput, pyplot
from toolclash.history import FAIL, OK

TOOL = "grant_tool_access"
INJECTED = "injected-fault"
"""Correct answers left out of the success rate: no funds, and failures an ``--inject`` option caused."""

COMMITTED, NONE, COMPENSATED, PARTIAL = "committed", "none", "compensated", "partial"


class View:
    """Indexes built once and shared by the checks."""

    def __init__(self, ops: Iterable[Mapping[str, Any]], final: Mapping[str, Any],
                 incomplete_processes: Iterable[str] = ()) -> None:
        self.ops = {op["op_id"]: op for op in ops if op["tool"] == TOOL}
        self.final = final
        self.accounts = {a["agent"]: a for a in final.get("accounts", [])}
        self.debits = {r["op_id"]: r for r in final.get("debits", [])}
        self.refunds = {r["op_id"]: r for r in final.get("refunds", [])}
        self.sagas = {r["op_id"]: r["state"] for r in final.get("sagas", [])}
        self.decisions = {r["op_id"]: r["decision"] for r in final.get("decisions", [])}
        self.has_auth = "grants" in final
        self.grants = {r["op_id"]: r for r in final.get("grants", [])}
        self.has_clickhouse = "clickhouse_events" in final
        self.usage: Counter[str] = Counter()
        self.refund_events: Counter[str] = Counter()
        for e in final.get("clickhouse_events", []):
            (self.usage if e["kind"] == "usage" else self.refund_events)[e["op_id"]] += 1
        self.incomplete = frozenset(incomplete_processes)

    def granted(self, op_id: str) -> bool:
        g = self.grants.get(op_id)
        return bool(g and g["granted"] and not g["revoked"])

    def from_incomplete_process(self, op_id: str) -> bool:
        return op_id.rpartition("-")[0] in self.incomplete

    def state(self, op_id: str) -> tuple[str, str]:
        """(committed | none | compensated | partial, what disagrees) from main and auth."""
        debit, grant, refund = op_id in self.debits, self.granted(op_id), op_id in self.refunds
        if debit and grant and not refund:
            return COMMITTED, ""
        if not debit and not grant and not refund:
            return NONE, ""
        if debit and refund and not grant:
            return COMPENSATED, ""
        if debit and not grant:
            return PARTIAL, "main has the debit, auth has no grant in force, and no refund was made (main)"
        if grant and not debit:
            return PARTIAL, "auth has the grant but main has no debit (auth)"
        if grant and refund:
            return PARTIAL, "main refunded the debit but auth still grants the permission (auth)"
        return PARTIAL, "a refund without a debit (main)"


def check_all(ops: Iterable[Mapping[str, Any]], final: Mapping[str, Any],
              incomplete_processes: Iterable[str] = ()) -> list[CheckResult]:
    return run_checks(SPEC, ops, final, incomplete_processes)


def atomic(v: View) -> CheckResult:
    """Every op id is committed in main and auth, or in neither, or (saga) compensated; and agrees with its
    outcome, its 2PC decision and its saga state."""
    name = "crossservice.atomic"
    if not v.has_auth:
        return result(name, UNKNOWN, {}, None, "the auth database's grants were not captured")
    ev = Evidence()
    counts: Counter[str] = Counter()
    for op_id, op in v.ops.items():
        st, what = v.state(op_id)
        outcome, mode = op["outcome"], op.get("strategy")
        counts[f"{outcome}_{st}"] += 1
        base = {"op_id": op_id, "outcome": outcome, "mode": mode, "reason": op.get("reason"),
                "main_debit": op_id in v.debits, "auth_grant": v.granted(op_id), "main_refund": op_id in v.refunds}
        if st == PARTIAL:
            ev.add({**base, "what": f"partial: {what}", "store": what.rpartition("(")[2].rstrip(")")})
        elif outcome == OK and st != COMMITTED:
            ev.add({**base, "what": f"acknowledged (ok) but {st} in the stores", "store": "main+auth"})
        elif outcome == FAIL and st == COMMITTED:
            ev.add({**base, "what": "reported fail but committed in main and auth", "store": "main+auth"})
        elif mode == "2pc":
            decision = v.decisions.get(op_id)
            if st == COMMITTED and decision != "commit":
                ev.add({**base, "decision": decision, "what": "committed without a commit decision",
                        "store": "decision log"})
            elif st != COMMITTED and decision == "commit":
                ev.add({**base, "decision": decision, "what": "the decision log says commit but the effects are "
                        "missing (a prepared transaction never committed?)", "store": "main+auth"})
            elif st == COMPENSATED:
                ev.add({**base, "what": "a 2PC operation was refunded", "store": "main"})
        elif mode == "saga":
            saga = v.sagas.get(op_id)
            want = {COMMITTED: "done", COMPENSATED: "compensated", NONE: None}[st]
            if saga != want:
                ev.add({**base, "saga_state": saga, "what": f"saga state {saga!r} but the stores say {st}",
                        "store": "main (saga state)"})
    doubtful = 0
    for op_id in set(v.debits) | set(v.grants) | set(v.refunds):
        if op_id in v.ops or v.state(op_id)[0] == NONE:
            continue
        if v.from_incomplete_process(op_id):
            doubtful += 1
            continue
        ev.add({"op_id": op_id, "what": "effects of an operation no agent recorded",
                "main_debit": op_id in v.debits, "auth_grant": v.granted(op_id), "store": "main+auth"})
    out = {"ops": len(v.ops), **dict(sorted(counts.items())), "effects_from_incomplete_history": doubtful}
    if ev:
        return result(name, False, out, ev, f"{ev.total} operation(s) not all-or-nothing across the stores")
    if doubtful:
        return result(name, UNKNOWN, out, ev, f"{doubtful} effect(s) from a process whose history is incomplete")
    return result(name, True, out, ev, "every operation is committed everywhere, nowhere, or compensated")


def no_prepared_left(v: View) -> CheckResult:
    """After recovery no prepared transaction is left on the main or the auth server."""
    name = "crossservice.prepared"
    if "prepared_main" not in v.final or "prepared_auth" not in v.final:
        return result(name, UNKNOWN, {}, None, "prepared transactions were not captured on both servers")
    ev = Evidence()
    for server in ("main", "auth"):
        for p in v.final[f"prepared_{server}"]:
            g = p["gid"]
            op_id = g[3:].rpartition(":")[0] if g.startswith("xs:") else None
            op = v.ops.get(op_id or "", {})
            ev.add({"store": server, "gid": g, "op_id": op_id, "outcome": op.get("outcome"),
                    "decision": v.decisions.get(op_id or ""), "what": "prepared transaction left in doubt"})
    counts = {"main": len(v.final["prepared_main"]), "auth": len(v.final["prepared_auth"])}
    if ev:
        return result(name, False, counts, ev, f"{ev.total} prepared transaction(s) left in doubt")
    return result(name, True, counts, ev, "no prepared transaction left on either server")


def credits_conserved(v: View) -> CheckResult:
    """Per account: initial − Σ debits + Σ refunds = final balance, and no balance below zero."""
    name = "crossservice.credits"
    debited: dict[str, int] = defaultdict(int)
    refunded: dict[str, int] = defaultdict(int)
    for r in v.debits.values():
        debited[r["agent"]] += int(r["cost"])
    for r in v.refunds.values():
        refunded[r["agent"]] += int(r["cost"])
    ev = Evidence()
    missing = sorted((set(v.final.get("accounts_seeded") or ()) | set(debited) | set(refunded)) - set(v.accounts))
    for agent in missing:  # seeded at reset, or charged, and gone from the final state
        ev.add({"agent": agent, "store": "main", "debited": debited.get(agent, 0), "refunded": refunded.get(agent, 0),
                "what": "account absent from the final state: its balance cannot be accounted for"})
    for agent, a in sorted(v.accounts.items()):
        expected = int(a["initial_balance"]) - debited[agent] + refunded[agent]
        if expected != int(a["balance"]) or int(a["balance"]) < 0:
            ev.add({"agent": agent, "store": "main", "initial": int(a["initial_balance"]), "debited": debited[agent],
                    "refunded": refunded[agent], "expected": expected, "final": int(a["balance"]),
                    "what": "balance does not match its debits and refunds" if expected != int(a["balance"])
                    else "balance below zero"})
    counts = {"accounts": len(v.accounts), "mismatched": ev.total, "debited": sum(debited.values()),
              "refunded": sum(refunded.values()), "missing_accounts": len(missing)}
    if ev:
        return result(name, False, counts, ev, f"{ev.total} account(s) do not balance")
    return result(name, True, counts, ev, "every account balances")


def analytics_exactly_once(v: View) -> CheckResult:
    """After the relay drained: one usage event per debit (and one refund event per refund) in ClickHouse's
    deduplicated view, none for other ops, and per-agent totals equal to the committed spend in main."""
    name = "crossservice.analytics"
    if not v.has_clickhouse:
        why = v.final.get("clickhouse_error") or "ClickHouse's events were not captured"
        return result(name, UNKNOWN, {}, None, f"no analytics to compare: {why}")
    pending = [r for r in v.final.get("outbox", []) if r.get("relayed_at") is None]
    ev = Evidence()
    counts: dict[str, Any] = {"events": sum(v.usage.values()) + sum(v.refund_events.values()),
                              "outbox_pending": len(pending)}
    ops = set(v.debits) | set(v.usage) | set(v.refund_events) | set(v.refunds)
    wrong = 0
    for op_id in sorted(ops):
        want_usage, want_refund = int(op_id in v.debits), int(op_id in v.refunds)
        got_usage, got_refund = v.usage.get(op_id, 0), v.refund_events.get(op_id, 0)
        if (got_usage, got_refund) != (want_usage, want_refund):
            wrong += 1
            if got_usage > want_usage or got_refund > want_refund or not pending:
                ev.add({"op_id": op_id, "store": "clickhouse", "usage_events": got_usage, "expected_usage": want_usage,
                        "refund_events": got_refund, "expected_refund": want_refund,
                        "what": "an event of an operation that did not happen" if not want_usage
                        else "counted more than once" if got_usage > want_usage or got_refund > want_refund
                        else "missing"})
    spend_main: dict[str, int] = defaultdict(int)
    for r in v.debits.values():
        spend_main[r["agent"]] += int(r["cost"])
    for r in v.refunds.values():
        spend_main[r["agent"]] -= int(r["cost"])
    spend_ch: dict[str, int] = defaultdict(int)
    for e in v.final["clickhouse_events"]:
        spend_ch[e["agent"]] += int(e["cost"]) * (1 if e["kind"] == "usage" else -1)
    totals_off = 0
    for agent in sorted(set(spend_main) | set(spend_ch)):
        if spend_main[agent] != spend_ch[agent]:
            totals_off += 1
            if not pending or spend_ch[agent] > spend_main[agent]:
                ev.add({"agent": agent, "store": "clickhouse", "clickhouse_total": spend_ch[agent],
                        "main_committed_total": spend_main[agent], "what": "per-agent total differs from main"})
    counts.update(ops_mismatched=wrong, agents_mismatched=totals_off)
    if ev:
        return result(name, False, counts, ev, f"{ev.total} analytics disagreement(s) with main")
    if pending:
        return result(name, UNKNOWN, counts, ev, f"the relay did not drain: {len(pending)} outbox row(s) pending")
    return result(name, True, counts, ev, "every committed operation counted exactly once; totals agree")


def figures(ops: Iterable[Mapping[str, Any]], final: Mapping[str, Any]) -> dict[str, Any]:
    """Analytics lag (outbox → ClickHouse), redeliveries absorbed by deduplication, recoveries."""
    lags = sorted((r["relayed_at"] - r["created_at"]) * 1000.0 for r in final.get("outbox", [])
                  if r.get("relayed_at") is not None)
    events = len(final.get("clickhouse_events", []))
    by = Counter(r["decided_by"] for r in final.get("decisions", []))
    sagas = Counter(r["state"] for r in final.get("sagas", []))
    return {"analytics_lag_p95_ms": percentile(lags, 95), "analytics_lag_max_ms": lags[-1] if lags else None,
            "clickhouse_raw_rows": final.get("clickhouse_raw_rows"), "clickhouse_events": events,
            "decisions_by": dict(by), "sagas_by_state": dict(sagas), "relay": final.get("relay"),
            "saga_compensated_by_recovery": sum(1 for r in final.get("sagas", [])
                                                if r["state"] == "compensated" and r["updated_by"] != "agent")}


def plots(p: PlotInput) -> list[tuple[str, Any]]:
    """Lag of every outbox event to ClickHouse over time."""
    rows = sorted((float(r["created_at"]), (float(r["relayed_at"]) - float(r["created_at"])) * 1000.0)
                  for r in p.final("crossservice").get("outbox", []) if r.get("relayed_at") is not None)
    if not rows:
        return []
    plt = pyplot()
    base = p.t0 if p.t0 is not None else rows[0][0]
    fig, ax = plt.subplots(figsize=(9, 3.2))
    ax.scatter([r[0] - base for r in rows], [r[1] for r in rows], s=6, color="teal")
    ax.set_xlabel("seconds since start (outbox event created)")
    ax.set_ylabel("lag to ClickHouse (ms)")
    p.shade(ax, base)
    ax.set_title(f"Analytics lag over time (outbox → ClickHouse, {len(rows)} events)")
    return [("Analytics lag over time", fig)]


SPEC = Checks(
    view=View,
    checks=(("crossservice.atomic", atomic), ("crossservice.prepared", no_prepared_left),
            ("crossservice.credits", credits_conserved), ("crossservice.analytics", analytics_exactly_once)),
    figures=figures,
    plots=plots,
)
