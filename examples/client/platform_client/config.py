"""``--target python:platform_client.config``: the config scenario on the example platform."""

from __future__ import annotations

from typing import Any

from platform_client import _http
from toolclash.targets import Rejected

SCENARIO = "config"
COLUMNS = {"records": ("id", "doc", "version"),
           "writes": ("op_id", "record_id", "field", "value", "version_read", "version_after", "seq", "doc_after")}


def check(options: dict[str, Any]) -> None:
    _http.check()


def reset(options: dict[str, Any]) -> None:
    status, body = _http.request("POST", "/admin/reset", {"configs": options["records"], "fields": options["fields"]})
    if status != 200:
        raise RuntimeError(f"reset answered {status}: {body}")


class Client:
    def __init__(self, agent: str, options: dict[str, Any]) -> None:
        self.agent = agent

    def invoke(self, tool: str, op_id: str, args: dict[str, Any]) -> dict[str, Any]:
        status, body = _http.request("PUT", f"/configs/{int(args['record'])}/fields/{args['field']}",
                                     {"value": args["value"]}, key=op_id)
        if status == 200:
            return {"version": body["version"]}
        if status == 404:
            raise Rejected("no-such-record")
        raise RuntimeError(f"unexpected answer {status}: {body}")  # in doubt


def final_state(options: dict[str, Any]) -> dict[str, list[dict[str, Any]]]:
    _, records = _http.request("GET", "/configs")
    _, writes = _http.request("GET", "/config-log")
    return {"records": records,
            "writes": [{"op_id": r["idempotency_key"], "record_id": r["config_id"], "field": r["field"],
                        "value": r["value"], "version_read": r["version_read"], "version_after": r["version_after"],
                        "seq": r["id"], "doc_after": r["doc_after"]} for r in writes]}
