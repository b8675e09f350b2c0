"""``--target python:platform_client.credits``: the credits scenario on the example platform."""

from __future__ import annotations

from typing import Any

from platform_client import _http
from toolclash.targets import Rejected

SCENARIO = "credits"
COLUMNS = {"accounts": ("id", "balance", "initial_balance"),
           "ledger": ("op_id", "account_id", "amount", "balance_before", "balance_after", "seq", "agent")}


def check(options: dict[str, Any]) -> None:
    _http.check()


def reset(options: dict[str, Any]) -> None:
    status, body = _http.request("POST", "/admin/reset", {"accounts": options["accounts"],
                                                         "initial_balance": options["initial_balance"]})
    if status != 200:
        raise RuntimeError(f"reset answered {status}: {body}")


class Client:
    def __init__(self, agent: str, options: dict[str, Any]) -> None:
        self.agent = agent

    def invoke(self, tool: str, op_id: str, args: dict[str, Any]) -> dict[str, Any]:
        status, body = _http.request("POST", f"/accounts/{int(args['account'])}/deduct",
                                     {"amount": args["amount"], "agent": self.agent}, key=op_id)
        if status == 200:
            return {"before": body["balance_before"], "after": body["balance_after"]}
        if status == 402:
            raise Rejected("insufficient-funds")
        if status == 404:
            raise Rejected("no-such-account")
        raise RuntimeError(f"unexpected answer {status}: {body}")  # in doubt

    def close(self) -> None:
        pass


def final_state(options: dict[str, Any]) -> dict[str, list[dict[str, Any]]]:
    _, accounts = _http.request("GET", "/accounts")
    _, ledger = _http.request("GET", "/ledger")
    return {"accounts": accounts,
            "ledger": [{"op_id": r["idempotency_key"], "account_id": r["account_id"], "amount": r["amount"],
                        "balance_before": r["balance_before"], "balance_after": r["balance_after"], "seq": r["id"],
                        "agent": r["agent"]} for r in ledger]}
