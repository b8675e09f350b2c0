"""A scenario pointed at a target: its hooks reset the platform, read its state at the start and its final state.

:func:`apply` turns a scenario's :class:`~toolclash.scenario.Scenario` into the same scenario with the target's
hooks: ``preflight`` (the platform answers), ``reset`` (the target's reset, if any), ``start``/``finish`` (the
tables read before any agent, for columns the target does not map, e.g. initial balances) and ``snapshot`` (the
final state, renamed to the checks' columns). Its checks, tools and options stay the scenario's own.
"""

from __future__ import annotations

import dataclasses
import json
import time
import urllib.error
import urllib.request
from collections.abc import Mapping
from typing import Any

from toolclash import db
from toolclash.option import mask_url
from toolclash.scenario import Context, Scenario
from toolclash.targets.pyclient import PythonTarget
from toolclash.targets.shape import TargetShape
from toolclash.targets.spec import FileTarget, HttpOp, ScenarioTarget, render_body, render_text

Target = FileTarget | PythonTarget

SETTLE_S = 15.0
"""How long the final state may keep moving after the load stopped (requests in flight still committing)."""
SETTLE_PAUSE_S = 0.2

HTTP_READ_TIMEOUT_S = 30.0
"""How long a reset or a final-state request may take (the agents' calls use the file's timeout_s)."""


class PlatformError(RuntimeError):
    """The platform could not be reset or read (one line)."""


def apply(target: Target, sc: Scenario) -> Scenario:
    """*sc* with the target's hooks (see the module's documentation)."""
    shape = sc.target
    assert shape is not None
    hooks = _PythonHooks(target, sc, shape) if isinstance(target, PythonTarget) else \
        _FileHooks(target, target.scenarios[sc.name], sc, shape)
    services = ("postgres",) if isinstance(target, FileTarget) and target.kind == "sql" else ()
    needs_start = any(t.from_start for t in shape.tables)
    return dataclasses.replace(
        sc, services=services, preflight=hooks.preflight, reset=hooks.reset,
        start=(lambda ctx: hooks.rows(ctx, start=True)) if needs_start else None,
        finish=(lambda ctx, handle, deadline_s: {"start": handle}) if needs_start else None,
        snapshot=hooks.snapshot, invariant=None)  # the scenario's live invariant reads toolclash's own tables


class _Hooks:
    def __init__(self, target: Target, sc: Scenario, shape: TargetShape) -> None:
        self.target = target
        self.sc = sc
        self.shape = shape

    def settled(self, ctx: Context) -> dict[str, Any]:
        """The final state once it stopped moving: read until two reads in a row agree (requests still in flight
        when the load stopped may commit meanwhile, between the reads of two tables), at most SETTLE_S."""
        deadline = time.monotonic() + SETTLE_S
        found = self.rows(ctx)
        while time.monotonic() < deadline:
            time.sleep(SETTLE_PAUSE_S)
            again = self.rows(ctx)
            if again == found:
                return found
            found = again
        found["unsettled"] = True
        return found

    def rows(self, ctx: Context, *, start: bool = False) -> dict[str, Any]:
        """``{"rows": table → rows (the checks' column names), "provided": table → columns}``."""
        raise NotImplementedError

    def snapshot(self, ctx: Context, conn: Any) -> dict[str, Any]:
        found = self.settled(ctx)
        start = (ctx.facts.get("start") or {}).get("rows")
        source = {**self.target.describe(), **({"unsettled_after_s": SETTLE_S} if found.get("unsettled") else {})}
        return self.shape.to_final(found["rows"], found["provided"], start, source)


class _FileHooks(_Hooks):
    def __init__(self, target: FileTarget, st: ScenarioTarget, sc: Scenario, shape: TargetShape) -> None:
        super().__init__(target, sc, shape)
        self.file = target
        self.st = st

    def preflight(self, backend: Any) -> None:
        if self.file.kind == "http":
            check_reachable(self.file)
        if self.st.final_source == "sql" and self.st.final_database_url:
            try:
                conn = db.connect(self.st.final_database_url, timeout=backend.connect_timeout_s,
                                  application_name="toolclash:preflight")
            except db.ConnectError as exc:
                raise PlatformError(f"{self.file.source}: {self.sc.name}.final.database_url: {exc}; fix the URL "
                                    "or start the database") from None
            db.close_quietly(conn)

    def reset(self, ctx: Context, conn: Any) -> None:
        values = vars(ctx.opts)
        if isinstance(self.st.reset, HttpOp):
            status, body = http_call(self.file, self.st.reset, values)
            if status not in self.st.reset.ok:
                raise PlatformError(f"{self.file.source}: {self.sc.name}.reset: {self.st.reset.method} "
                                    f"{self.st.reset.path} answered {status} {str(body)[:200]}; fix the request "
                                    "or the platform")
        elif self.st.reset is not None:
            with conn.cursor() as cur:
                for step in self.st.reset:
                    cur.execute(step.sql, values)
            conn.commit()

    def rows(self, ctx: Context, *, start: bool = False) -> dict[str, Any]:
        tables = [t for t in self.st.final if not start or (self.shape.table(t.name) or _NONE).from_start]
        out: dict[str, list[dict[str, Any]]] = {}
        if self.st.final_source == "http":
            for t in tables:
                op = HttpOp("GET", t.path, {}, None, frozenset({200}), {})
                status, body = http_call(self.file, op, {})
                if status != 200:
                    raise PlatformError(f"{self.file.source}: {self.sc.name}.final.{t.name}: GET {t.path} answered "
                                        f"{status}; it must answer 200 with a JSON list of rows")
                found = body.get(t.rows_field) if t.rows_field and isinstance(body, dict) else body
                if not isinstance(found, list):
                    raise PlatformError(f"{self.file.source}: {self.sc.name}.final.{t.name}: GET {t.path} did not "
                                        f"answer a JSON list{' under ' + t.rows_field if t.rows_field else ''}; "
                                        "set rows_field to the key that holds the rows")
                out[t.name] = found
        else:
            url = self.st.final_database_url or ctx.backend.url("DATABASE_URL")
            conn = db.connect(url, timeout=ctx.backend.connect_timeout_s,
                              application_name=f"tc:{ctx.run_id}:final"[:63])
            try:
                conn.set_session(readonly=True)
                with conn.cursor() as cur:
                    for t in tables:
                        cur.execute(t.query)
                        names = [d[0] for d in cur.description or ()]
                        out[t.name] = [dict(zip(names, r, strict=True)) for r in cur.fetchall()]
                conn.rollback()
            finally:
                db.close_quietly(conn)
        rows, provided = {}, {}
        for t in tables:
            missing = [theirs for theirs in t.columns.values() if out[t.name] and theirs not in out[t.name][0]]
            if missing:
                raise PlatformError(f"{self.file.source}: {self.sc.name}.final.{t.name}: the rows have no "
                                    f"{', '.join(missing)}; fix columns (their keys are "
                                    f"{', '.join(map(str, out[t.name][0]))})")
            rows[t.name] = [{ours: r.get(theirs) for ours, theirs in t.columns.items()} for r in out[t.name]]
            provided[t.name] = list(t.columns)
        return {"rows": rows, "provided": provided}


class _PythonHooks(_Hooks):
    def preflight(self, backend: Any) -> None:
        check = getattr(self.target.module, "check", None)  # type: ignore[union-attr]
        if callable(check):
            check({o.name: o.default for o in self.sc.options})

    def reset(self, ctx: Context, conn: Any) -> None:
        reset = getattr(self.target.module, "reset", None)  # type: ignore[union-attr]
        if callable(reset):
            reset(dict(vars(ctx.opts)))

    def rows(self, ctx: Context, *, start: bool = False) -> dict[str, Any]:
        assert isinstance(self.target, PythonTarget)
        found = self.target.module.final_state(dict(vars(ctx.opts)))
        if not isinstance(found, Mapping):
            raise PlatformError(f"{self.target.module_name}.final_state returned {type(found).__name__}; it must "
                                "return a dict of table name -> list of rows")
        rows, provided = {}, {}
        for table in self.shape.tables:
            if table.name not in found:
                continue
            rows[table.name] = [dict(r) for r in found[table.name]]
            provided[table.name] = self.target.columns(table.name, rows[table.name], table.required)
        return {"rows": rows, "provided": provided}


class _NoTable:
    from_start: Mapping[str, str] = {}


_NONE = _NoTable()


# ----------------------------------------------------------------------------------------------- HTTP


def http_call(target: FileTarget, op: HttpOp, values: Mapping[str, Any], *,
              timeout: float = HTTP_READ_TIMEOUT_S) -> tuple[int, Any]:
    """One request outside the load (a reset, a final-state read): ``(status, parsed JSON or text)``."""
    headers = {k: render_text(v, values) for k, v in {**target.headers, **op.headers}.items()
               if "{op_id}" not in v and "{agent}" not in v}
    data = None
    if op.json is not None:
        data = json.dumps(render_body(op.json, values)).encode()
        headers.setdefault("Content-Type", "application/json")
    url = target.base_url + render_text(op.path, values, quote=True)
    request = urllib.request.Request(url, data=data, method=op.method, headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=timeout) as resp:
            status, raw = resp.status, resp.read()
    except urllib.error.HTTPError as exc:
        status, raw = exc.code, exc.read()
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        raise PlatformError(f"{target.source}: base_url {mask_url(target.base_url)}: {op.method} {op.path} failed "
                            f"({reason}); start the platform or fix base_url") from None
    try:
        return status, json.loads(raw) if raw else None
    except ValueError:
        return status, raw.decode(errors="replace")


def check_reachable(target: FileTarget) -> None:
    """The platform answers at its base_url (any HTTP answer will do); :class:`PlatformError` when not."""
    request = urllib.request.Request(target.base_url + "/", method="GET")
    try:
        with urllib.request.urlopen(request, timeout=min(target.timeout_s * 2, 10.0)):
            pass
    except urllib.error.HTTPError:
        pass  # it answered
    except (TimeoutError, urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        raise PlatformError(f"{target.source}: base_url: {mask_url(target.base_url)} is unreachable ({reason}); "
                            "start the platform or fix base_url") from None
