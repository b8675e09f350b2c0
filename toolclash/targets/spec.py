"""A target file (TOML) read and checked: what each tool call becomes on the platform, and how its final state is read.

Every problem is one :class:`TargetError` line naming the file, the key and the fix, raised before any agent
starts. ``{env:NAME}`` in a string is replaced by that environment variable when the file is read (on the
process that reads it: the master, which sends the resolved target to its workers).
"""

from __future__ import annotations

import functools
import os
import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote as url_quote

from toolclash.option import SettingsError, mask_url
from toolclash.targets.shape import TargetShape

KINDS = ("http", "sql")
METHODS = ("GET", "POST", "PUT", "PATCH", "DELETE")
IN_DOUBT_STATUSES = frozenset({502, 503, 504})
"""A gateway's answer: the request may or may not have been applied. Never a definite ``fail``."""
ISOLATION = ("read_committed", "repeatable_read", "serializable")
COMMON_PLACEHOLDERS = ("op_id", "agent")
DEFAULT_IDEMPOTENCY_HEADER = "Idempotency-Key"

_PLACEHOLDER = re.compile(r"\{([^{}]*)\}")
_ENV = re.compile(r"\{env:([A-Za-z_][A-Za-z0-9_]*)\}")
_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


class TargetError(SettingsError):
    """A bad target (one line: the file, the key, what is wrong and how to fix it)."""


@dataclass(frozen=True)
class HttpOp:
    """One request: templates, and how its answer maps to an outcome."""

    method: str
    path: str
    headers: Mapping[str, str]
    json: Any
    ok: frozenset[int]
    fail: Mapping[int, str]
    reason_field: str = ""
    reasons: Mapping[str, str] = field(default_factory=dict)

    def outcome(self, status: int, body: Any) -> tuple[str, str]:
        """``(outcome, reason)`` of an answer with *status* (and parsed JSON *body*, or None)."""
        if status in self.ok:
            return "ok", ""
        if status in IN_DOUBT_STATUSES:
            return "unknown", f"http-{status}"
        named = body.get(self.reason_field) if self.reason_field and isinstance(body, dict) else None
        if status in self.fail:
            reason = self.fail[status]
            if named is not None and str(named) in self.reasons:
                reason = self.reasons[str(named)]
            return "fail", reason
        if 400 <= status < 500:  # a client error: the platform refused it, nothing was applied
            if named is not None:
                return "fail", self.reasons.get(str(named), str(named))
            return "fail", f"http-{status}"
        return "unknown", f"http-{status}"  # 5xx, or a 2xx/3xx the file does not call ok: in doubt


@dataclass(frozen=True)
class SqlStep:
    sql: str
    """psycopg2's form: ``%(name)s`` parameters."""
    returns: tuple[str, ...] = ()
    empty: str = ""
    """Reason of a definite ``fail`` when the statement returns no row (rolled back); empty: no check."""


@dataclass(frozen=True)
class SqlOp:
    steps: tuple[SqlStep, ...]
    isolation: str = "read_committed"


@dataclass(frozen=True)
class FinalTable:
    name: str
    columns: Mapping[str, str]
    """The checks' column → the platform's column."""
    query: str = ""
    path: str = ""
    rows_field: str = ""


@dataclass(frozen=True)
class ScenarioTarget:
    """One scenario's part of a target file."""

    scenario: str
    operations: Mapping[str, HttpOp | SqlOp]
    reset: HttpOp | tuple[SqlStep, ...] | None
    final_source: str
    final_database_url: str
    final: tuple[FinalTable, ...]


@dataclass(frozen=True)
class FileTarget:
    """A target file, read and checked (HTTP or SQL)."""

    source: str
    kind: str
    scenarios: Mapping[str, ScenarioTarget]
    data: Mapping[str, Any]
    """The file's content with ``{env:…}`` resolved: what travels to workers."""
    base_url: str = ""
    timeout_s: float = 5.0
    tries: int = 1
    idempotency_header: str = DEFAULT_IDEMPOTENCY_HEADER
    headers: Mapping[str, str] = field(default_factory=dict)

    def describe(self) -> dict[str, Any]:
        out: dict[str, Any] = {"source": self.source, "kind": self.kind, "scenarios": list(self.scenarios)}
        if self.base_url:
            out["base_url"] = mask_url(self.base_url)
        return out


def read_file(path: str) -> dict[str, Any]:
    """The file's TOML, ``{env:NAME}`` resolved; :class:`TargetError` when it cannot be read."""
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except OSError as exc:
        raise TargetError(f"--target {path}: cannot read it ({exc.strerror}); give the path of a TOML target "
                          "file (see docs/your-platform.md) or python:<module>") from None
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise TargetError(f"{path}: not valid TOML ({exc}); fix the syntax") from None
    return _resolve_env(data, path, "")


def _resolve_env(value: Any, source: str, key: str) -> Any:
    if isinstance(value, dict):
        return {k: _resolve_env(v, source, f"{key}.{k}" if key else k) for k, v in value.items()}
    if isinstance(value, list):
        return [_resolve_env(v, source, f"{key}[{i}]") for i, v in enumerate(value)]
    if isinstance(value, str):
        def env(m: re.Match[str]) -> str:
            found = os.environ.get(m.group(1))
            if found is None:
                raise TargetError(f"{source}: {key}: environment variable {m.group(1)} is not set; export it "
                                  f"or write the value in the file")
            return found

        return _ENV.sub(env, value)
    return value


class _Reader:
    """Typed access to the file's tables, every error naming the file and the key."""

    def __init__(self, source: str) -> None:
        self.source = source

    def error(self, key: str, what: str) -> TargetError:
        return TargetError(f"{self.source}: {key}: {what}")

    def table(self, data: Mapping[str, Any], key: str, name: str, *, required: bool = True) -> dict[str, Any]:
        value = data.get(name)
        full = f"{key}.{name}" if key else name
        if value is None:
            if required:
                raise self.error(full, f"missing; add a [{full}] table")
            return {}
        if not isinstance(value, dict):
            raise self.error(full, f"must be a table ([{full}]), not {type(value).__name__}")
        return value

    def text(self, data: Mapping[str, Any], key: str, name: str, default: str | None = None) -> str:
        value = data.get(name, default)
        full = f"{key}.{name}" if key else name
        if value is None:
            raise self.error(full, f"missing; add {name} = \"…\"")
        if not isinstance(value, str):
            raise self.error(full, f"must be a string, not {type(value).__name__}")
        return value

    def number(self, data: Mapping[str, Any], key: str, name: str, default: float, *, least: float) -> float:
        value = data.get(name, default)
        full = f"{key}.{name}" if key else name
        if isinstance(value, bool) or not isinstance(value, int | float) or value < least:
            raise self.error(full, f"must be a number of at least {least:g}, got {value!r}")
        return float(value)

    def unknown_keys(self, data: Mapping[str, Any], key: str, known: tuple[str, ...]) -> None:
        for name in data:
            if name not in known:
                full = f"{key}.{name}" if key else name
                raise self.error(full, f"unknown key; the keys here are {', '.join(known)}")


def placeholders(template: str) -> list[str]:
    return _PLACEHOLDER.findall(template.replace("{{", "").replace("}}", ""))


def check_placeholders(r: _Reader, key: str, template: str, known: tuple[str, ...]) -> None:
    for name in placeholders(template):
        if name not in known:
            raise r.error(key, f"unknown placeholder {{{name}}}; use one of "
                               f"{', '.join('{' + k + '}' for k in known)}")


def _templates(value: Any, key: str) -> list[tuple[str, str]]:
    """Every string of a JSON body template, with its key."""
    if isinstance(value, dict):
        return [t for k, v in value.items() for t in _templates(v, f"{key}.{k}")]
    if isinstance(value, list):
        return [t for i, v in enumerate(value) for t in _templates(v, f"{key}[{i}]")]
    return [(key, value)] if isinstance(value, str) else []


def _status(r: _Reader, key: str, value: Any) -> int:
    try:
        status = int(value)
    except (TypeError, ValueError):
        status = 0
    if not 100 <= status <= 599:
        raise r.error(key, f"{value!r} is not an HTTP status (100-599)")
    return status


def http_op(r: _Reader, data: Mapping[str, Any], key: str, known: tuple[str, ...], *, outcomes: bool) -> HttpOp:
    allowed = ("method", "path", "headers", "json", "ok", "fail", "reason_field", "reasons")
    r.unknown_keys(data, key, allowed if outcomes else (*allowed[:4], "ok"))
    method = r.text(data, key, "method", "POST").upper()
    if method not in METHODS:
        raise r.error(f"{key}.method", f"{method!r} is not one of {', '.join(METHODS)}")
    path = r.text(data, key, "path")
    if not path.startswith("/"):
        raise r.error(f"{key}.path", f"{path!r} must start with / (it is appended to base_url)")
    check_placeholders(r, f"{key}.path", path, known)
    headers = r.table(data, key, "headers", required=False)
    for name, value in headers.items():
        if not isinstance(value, str):
            raise r.error(f"{key}.headers.{name}", "must be a string")
        check_placeholders(r, f"{key}.headers.{name}", value, known)
    body = data.get("json")
    for where, template in _templates(body, f"{key}.json"):
        check_placeholders(r, where, template, known)
    ok_list = data.get("ok", [200, 201, 204])
    if not isinstance(ok_list, list) or not ok_list:
        raise r.error(f"{key}.ok", "must be a list of HTTP statuses meaning success, e.g. ok = [200]")
    ok = frozenset(_status(r, f"{key}.ok", s) for s in ok_list)
    for status in ok:
        if not 200 <= status < 300:
            raise r.error(f"{key}.ok", f"{status} is not a success status; ok lists 2xx statuses only")
    fail: dict[int, str] = {}
    for code, reason in r.table(data, key, "fail", required=False).items():
        status = _status(r, f"{key}.fail", code)
        if status in IN_DOUBT_STATUSES:
            raise r.error(f"{key}.fail.{code}", f"{status} comes from a gateway and leaves the call in doubt; it "
                                                "is never a definite fail: remove it")
        if status in ok:
            raise r.error(f"{key}.fail.{code}", f"{status} is listed in ok too; keep it in one of them")
        if not 400 <= status < 500:
            raise r.error(f"{key}.fail.{code}", f"{status} is not a client error (4xx): only a 4xx answer says "
                                                "for sure that nothing was applied")
        if not isinstance(reason, str) or not reason:
            raise r.error(f"{key}.fail.{code}", "must name the reason, e.g. 402 = \"insufficient-funds\"")
        fail[status] = reason
    reason_field = r.text(data, key, "reason_field", "")
    reasons = r.table(data, key, "reasons", required=False)
    if reasons and not reason_field:
        raise r.error(f"{key}.reasons", "needs reason_field = \"<the JSON field of the answer that names them>\"")
    return HttpOp(method, path, {k: str(v) for k, v in headers.items()}, body, ok, fail, reason_field,
                  {str(k): str(v) for k, v in reasons.items()})


def sql_template(r: _Reader, key: str, sql: Any, known: tuple[str, ...]) -> str:
    """``{name}`` → ``%(name)s`` (``%`` doubled, ``{{``/``}}`` are literal braces), placeholders checked."""
    if not isinstance(sql, str) or not sql.strip():
        raise r.error(key, "must be an SQL statement (a string)")
    check_placeholders(r, key, sql, known)
    text = sql.replace("%", "%%").replace("{{", "\0").replace("}}", "\1")
    text = _PLACEHOLDER.sub(lambda m: f"%({m.group(1)})s", text)
    return text.replace("\0", "{").replace("\1", "}")


def sql_op(r: _Reader, data: Mapping[str, Any], key: str, known: tuple[str, ...]) -> SqlOp:
    r.unknown_keys(data, key, ("steps", "isolation"))
    isolation = r.text(data, key, "isolation", "read_committed")
    if isolation not in ISOLATION:
        raise r.error(f"{key}.isolation", f"{isolation!r} is not one of {', '.join(ISOLATION)}")
    raw = data.get("steps")
    if not isinstance(raw, list) or not raw:
        raise r.error(f"{key}.steps", "missing; add [[" + key + ".steps]] tables, each with sql = \"…\"")
    steps = []
    names = known
    for i, step in enumerate(raw):
        where = f"{key}.steps[{i}]"
        if not isinstance(step, dict):
            raise r.error(where, "must be a table with sql = \"…\"")
        r.unknown_keys(step, where, ("sql", "returns", "empty"))
        returns = step.get("returns", [])
        if not isinstance(returns, list) or not all(isinstance(x, str) and _NAME.fullmatch(x) for x in returns):
            raise r.error(f"{where}.returns", "must list the names of the columns the statement returns")
        empty = r.text(step, where, "empty", "")
        if empty and not returns:
            raise r.error(f"{where}.empty", "a statement that can come back empty must return columns; add "
                                            "RETURNING … and returns = [\"…\"]")
        steps.append(SqlStep(sql_template(r, f"{where}.sql", step.get("sql"), names), tuple(returns), empty))
        names = (*names, *returns)
    return SqlOp(tuple(steps), isolation)


def final_tables(r: _Reader, data: Mapping[str, Any], key: str, shape: TargetShape, source: str
                 ) -> tuple[FinalTable, ...]:
    out = []
    names = tuple(t.name for t in shape.tables)
    r.unknown_keys(data, key, ("source", "database_url", *names))
    for table in shape.tables:
        spec = r.table(data, key, table.name, required=False)
        if not spec:
            continue
        where = f"{key}.{table.name}"
        r.unknown_keys(spec, where, ("query", "columns") if source == "sql" else ("path", "rows_field", "columns"))
        columns = r.table(spec, where, "columns")
        for col in columns:
            if col not in table.columns:
                raise r.error(f"{where}.columns.{col}", f"not a column the checks use; they read "
                                                        f"{', '.join(table.columns)}")
        for col in table.required:
            if not isinstance(columns.get(col), str):
                raise r.error(f"{where}.columns", f"missing mapping for {col}; add {col} = \"<your column>\" "
                                                  f"(required: {', '.join(table.required)})")
        if source == "sql":
            query = r.text(spec, where, "query")
            if placeholders(query):
                raise r.error(f"{where}.query", "a final-state query takes no placeholders")
            out.append(FinalTable(table.name, dict(columns), query=query))
        else:
            path = r.text(spec, where, "path")
            if not path.startswith("/"):
                raise r.error(f"{where}.path", f"{path!r} must start with / (it is appended to base_url)")
            out.append(FinalTable(table.name, dict(columns), path=path, rows_field=r.text(spec, where, "rows_field",
                                                                                            "")))
    if not out:
        raise r.error(key, f"maps no table; add [{key}.{names[0]}] (tables: {', '.join(names)})")
    return tuple(out)


def scenario_target(r: _Reader, data: Mapping[str, Any], kind: str, name: str, shape: TargetShape,
                    option_names: tuple[str, ...]) -> ScenarioTarget:
    section = r.table(data, "", name)
    tools = tuple(shape.operations)
    r.unknown_keys(section, name, ("reset", *tools, "final"))
    operations: dict[str, HttpOp | SqlOp] = {}
    for tool, args in shape.operations.items():
        spec = r.table(section, name, tool)
        known = (*COMMON_PLACEHOLDERS, *args)
        operations[tool] = (http_op(r, spec, f"{name}.{tool}", known, outcomes=True) if kind == "http"
                            else sql_op(r, spec, f"{name}.{tool}", known))
    reset: HttpOp | tuple[SqlStep, ...] | None = None
    reset_spec = r.table(section, name, "reset", required=False)
    if reset_spec and kind == "http":
        reset = http_op(r, reset_spec, f"{name}.reset", option_names, outcomes=False)
    elif reset_spec:
        r.unknown_keys(reset_spec, f"{name}.reset", ("statements",))
        statements = reset_spec.get("statements")
        if not isinstance(statements, list) or not statements:
            raise r.error(f"{name}.reset.statements", "must be a list of SQL statements")
        reset = tuple(SqlStep(sql_template(r, f"{name}.reset.statements[{i}]", s, option_names))
                      for i, s in enumerate(statements))
    final = r.table(section, name, "final")
    source = r.text(final, f"{name}.final", "source", "sql" if kind == "sql" else "http")
    if source not in ("sql", "http"):
        raise r.error(f"{name}.final.source", f"{source!r} is not sql or http")
    if source == "http" and kind != "http":
        raise r.error(f"{name}.final.source", "http needs kind = \"http\" and base_url; use source = \"sql\"")
    database_url = r.text(final, f"{name}.final", "database_url", "")
    if database_url and not database_url.startswith(("postgresql://", "postgres://")):
        raise r.error(f"{name}.final.database_url", f"{mask_url(database_url)!r} is not a postgresql:// URL")
    if source == "sql" and kind == "http" and not database_url:
        raise r.error(f"{name}.final.database_url", "missing; the final state is read with SQL: add "
                                                    "database_url = \"{env:YOUR_DATABASE_URL}\" (read only)")
    return ScenarioTarget(name, operations, reset, source, database_url,
                          final_tables(r, final, f"{name}.final", shape, source))


def parse(source: str, data: Mapping[str, Any], shapes: Mapping[str, tuple[TargetShape | None, tuple[str, ...]]]
          ) -> FileTarget:
    """Check *data* (a target file's resolved TOML) for the run's scenarios: *shapes* maps each scenario to
    its :class:`TargetShape` (None: not targetable) and its option names (the placeholders of a reset)."""
    r = _Reader(source)
    kind = r.text(data, "", "kind", "http")
    if kind not in KINDS:
        raise r.error("kind", f"{kind!r} is not one of {', '.join(KINDS)} (a Python client is given as "
                              "--target python:<module>)")
    top = ("kind", "base_url", "timeout_s", "tries", "idempotency_header", "headers")
    for key in data:
        if key not in top and not isinstance(data[key], dict):
            raise r.error(key, f"unknown key; the keys at the top are {', '.join(top)}, then one table per scenario")
    scenarios = {}
    for name, (shape, option_names) in shapes.items():
        if shape is None:
            raise TargetError(f"--target: scenario {name} cannot be pointed at another platform yet; targetable "
                              "scenarios declare Scenario.target (see docs/your-platform.md)")
        scenarios[name] = scenario_target(r, data, kind, name, shape, option_names)
    base_url = ""
    headers: dict[str, str] = {}
    if kind == "http":
        base_url = r.text(data, "", "base_url").rstrip("/")
        if not base_url.startswith(("http://", "https://")):
            raise r.error("base_url", f"{mask_url(base_url)!r} must start with http:// or https://")
        for hname, value in r.table(data, "", "headers", required=False).items():
            if not isinstance(value, str):
                raise r.error(f"headers.{hname}", "must be a string")
            check_placeholders(r, f"headers.{hname}", value, COMMON_PLACEHOLDERS)
            headers[hname] = value
    tries = int(r.number(data, "", "tries", 1, least=1))
    idempotency_header = r.text(data, "", "idempotency_header", DEFAULT_IDEMPOTENCY_HEADER)
    if tries > 1 and kind == "http" and not idempotency_header:
        raise r.error("tries", "a retry resends a call whose first attempt may have been applied: it needs the op "
                               "id as an idempotency key; set idempotency_header or tries = 1")
    return FileTarget(source=source, kind=kind, scenarios=scenarios, data=data, base_url=base_url,
                      timeout_s=r.number(data, "", "timeout_s", 5.0, least=0.001),
                      tries=tries, idempotency_header=idempotency_header, headers=headers)


# ------------------------------------------------------------------------------------------- rendering


@functools.lru_cache(maxsize=256)
def _parts(template: str) -> tuple[str, ...]:
    """*template* split once into literal, name, literal, name, …, literal (``{{``/``}}`` literal braces)."""
    text = template.replace("{{", "\0").replace("}}", "\1")
    pieces = _PLACEHOLDER.split(text)
    return tuple(p.replace("\0", "{").replace("\1", "}") if i % 2 == 0 else p for i, p in enumerate(pieces))


@functools.lru_cache(maxsize=256)
def _single(template: str) -> str | None:
    """The name when *template* is exactly one placeholder (``"{amount}"``), else None."""
    m = _PLACEHOLDER.fullmatch(template)
    return m.group(1) if m is not None else None


def render_text(template: str, values: Mapping[str, Any], *, quote: bool = False) -> str:
    """*template* with each ``{name}`` replaced by ``values[name]`` (URL-quoted when *quote*)."""
    parts = _parts(template)
    if len(parts) == 1:
        return parts[0]
    out = []
    for i, part in enumerate(parts):
        if i % 2 == 0:
            out.append(part)
        else:
            text = str(values[part])
            out.append(url_quote(text, safe="") if quote else text)
    return "".join(out)


def render_body(template: Any, values: Mapping[str, Any]) -> Any:
    """A JSON body template filled in: a string that is one placeholder keeps the value's type (``"{amount}"``
    → ``7``), any other string is text."""
    if isinstance(template, dict):
        return {k: render_body(v, values) for k, v in template.items()}
    if isinstance(template, list):
        return [render_body(v, values) for v in template]
    if isinstance(template, str):
        name = _single(template)
        if name is not None and name in values:
            return values[name]
        return render_text(template, values)
    return template
