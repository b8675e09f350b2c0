"""One typed settings object for a run.

Every option is declared once, in :data:`OPTIONS`. The Locust plugin
(``users/runtime.py``) registers each of them with Locust's parser (so they
appear in ``--help``, in the web UI and as ``TOOLCLASH_*``/named environment
variables); :func:`Settings.from_mapping` turns the parsed values into a
validated :class:`Settings`. Nothing here touches the network or the disk.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any

PROFILES = ("normal", "stress")

PROFILE_DEFAULTS: dict[str, dict[str, float]] = {
    # The seed plan's *normal load*: agents think between tool calls.
    "normal": {"wait_min": 0.5, "wait_max": 1.5, "gate_conflict_rate": 0.05},
    # *Stress*: no think time at all.
    "stress": {"wait_min": 0.0, "wait_max": 0.0, "gate_conflict_rate": 0.20},
}


class SettingsError(ValueError):
    """A bad option value. The message is one line: what is wrong and how to fix it."""


@dataclass(frozen=True)
class Option:
    """One command-line option, declared once for Locust's parser, the web UI and the env."""

    name: str  # attribute name (``--`` + name with ``-`` is the flag)
    type: type
    default: Any
    help: str
    env_var: str | None = None
    choices: tuple[str, ...] | None = None
    is_secret: bool = False
    locust_builtin: bool = False
    """Locust already declares this flag (``--profile``): reuse it rather than declare it again."""

    @property
    def flag(self) -> str:
        return "--" + self.name.replace("_", "-")

    @property
    def env(self) -> str:
        return self.env_var or "TOOLCLASH_" + self.name.upper()


OPTIONS: tuple[Option, ...] = (
    Option("database_url", str, "", "PostgreSQL URL of your own database; empty starts a private embedded "
           "server for the run. Only the 'toolclash' schema is ever touched.", env_var="DATABASE_URL",
           is_secret=True),
    Option("auth_database_url", str, "", "PostgreSQL URL of your own auth-service database (cross-service "
           "scenario); empty starts a second private server", env_var="AUTH_DATABASE_URL", is_secret=True),
    Option("redis_url", str, "", "Redis URL of your own server (queue scenario); empty starts a private one",
           env_var="REDIS_URL", is_secret=True),
    Option("clickhouse_url", str, "", "ClickHouse URL (native protocol, clickhouse://user:pw@host:9000/db) of "
           "your own server (analytics); empty starts a private one", env_var="CLICKHOUSE_URL", is_secret=True),
    Option("pgbouncer_url", str, "", "PostgreSQL URL of your own PgBouncer in front of DATABASE_URL (pool "
           "scenario); empty starts a private one", env_var="PGBOUNCER_URL", is_secret=True),
    Option("strategy", str, "", "strategy of the scenario's tool (each scenario lists its own; empty: the "
           "scenario's default). A strategy only some scenarios know applies to those, the rest keep their default"),
    Option("fault", str, "none", "planted fault that a check must catch (each scenario lists its own)"),
    Option("profile", str, "normal", "load profile: normal (agents think between calls) or stress (no think "
           "time); sets default wait time and conflict-rate gate", choices=PROFILES,
           locust_builtin=True),
    Option("tool_think_ms", float, 0.0, "pause between an agent's read and its write inside one call "
           "(an agent reasoning over what it read); widens race windows"),
    Option("wait_min", float, -1.0, "least think time between tool calls in seconds (-1: profile default)"),
    Option("wait_max", float, -1.0, "most think time between tool calls in seconds (-1: profile default)"),
    Option("max_tries", int, 10, "attempts per call before giving up on retryable conflicts"),
    Option("retry_base_ms", float, 2.0, "first backoff cap in ms (full jitter, doubles per retry)"),
    Option("retry_cap_ms", float, 200.0, "largest backoff cap in ms"),
    Option("retry_deadline_s", float, 5.0, "overall deadline of one call including retries, in seconds"),
    Option("connect_timeout_s", float, 10.0, "deadline for opening one database connection"),
    Option("gate_conflict_rate", float, -1.0, "SLA gate: most conflicts per attempt (-1: 0.05 for "
           "--profile normal, 0.20 for stress)"),
    Option("gate_p95_ms", float, 2000.0, "SLA gate: most P95 call latency including retries, in ms"),
    Option("gate_success_rate", float, 0.999, "SLA gate: least share of calls that succeed after retries"),
    Option("sync", int, 0, "1: before every tool call each agent waits at a barrier until all --sync-parties "
           "agents (on every worker) are there, so they call at the same instant; 0: off"),
    Option("sync_parties", int, 0, "agents a barrier waits for (0: the run's user count, -u)"),
    Option("sync_timeout_s", float, 10.0, "longest wait at a barrier before the agent goes on alone (counted)"),
    Option("stages", str, "5,10,25,50,100", "ramp shape (locustfiles/mixed.py): agents at each stage, comma-separated"),
    Option("stage_seconds", float, 30.0, "ramp shape: length of each stage in seconds"),
    Option("stage_spawn_rate", float, 10.0, "ramp shape: agents started (or stopped) per second between stages"),
    Option("stage_gate_conflict_low", float, 0.05, "per-stage SLA gate: most conflicts per attempt in a stage "
           "of at most 10 agents"),
    Option("stage_gate_conflict_high", float, 0.20, "per-stage SLA gate: most conflicts per attempt in a stage "
           "of more than 10 agents"),
    Option("reports_dir", str, "reports", "where run directories reports/<run-id>/ are written"),
    Option("run_id", str, "", "name of this run's directory (default: time stamp + random suffix)"),
)

OPTIONS_BY_NAME = {o.name: o for o in OPTIONS}

_RUN_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")


@dataclass(frozen=True, kw_only=True)
class Settings:
    """Validated settings of one run. Build with :meth:`from_mapping`."""

    database_url: str = field(default="", repr=False)
    """PostgreSQL URL; empty means the embedded stack provides one."""
    auth_database_url: str = field(default="", repr=False)
    redis_url: str = field(default="", repr=False)
    clickhouse_url: str = field(default="", repr=False)
    pgbouncer_url: str = field(default="", repr=False)
    strategy: str = ""
    """Strategy asked for; :meth:`strategy_for` resolves it per scenario."""
    fault: str = "none"
    """Planted fault asked for; :meth:`fault_for` resolves it per scenario."""
    profile: str = "normal"
    """Load profile, one of :data:`PROFILES`."""
    tool_think_ms: float = 0.0
    wait_min: float = 0.5
    """Think time between calls, resolved from the profile when not given."""
    wait_max: float = 1.5
    max_tries: int = 10
    retry_base_ms: float = 2.0
    retry_cap_ms: float = 200.0
    retry_deadline_s: float = 5.0
    connect_timeout_s: float = 10.0
    gate_conflict_rate: float = 0.05
    """Resolved from the profile when not given."""
    gate_p95_ms: float = 2000.0
    gate_success_rate: float = 0.999
    sync: int = 0
    """1: agents meet at a barrier before every call (see users/runtime.py ``barrier``)."""
    sync_parties: int = 0
    sync_timeout_s: float = 10.0
    stages: str = "5,10,25,50,100"
    """Agents per stage of the ramp shape; see :meth:`stage_users`."""
    stage_seconds: float = 30.0
    stage_spawn_rate: float = 10.0
    stage_gate_conflict_low: float = 0.05
    stage_gate_conflict_high: float = 0.20
    reports_dir: str = "reports"
    run_id: str = ""
    scenarios: tuple[str, ...] = ("credits",)
    """Scenarios of the run, in the order of the locustfile's ``setup()``."""
    scenario_options: Mapping[str, SimpleNamespace] = field(default_factory=dict)
    """Each scenario's own options (declared in its tool module's ``OPTIONS``)."""
    extra: Mapping[str, Any] = field(default_factory=dict)
    """Options declared nowhere here (Locust's own and others), passed through untouched."""

    @classmethod
    def from_mapping(cls, values: Mapping[str, Any], scenarios: Sequence[str] = ("credits",)) -> Settings:
        """Validate parsed option values (Locust's ``parsed_options`` as a dict, or any mapping).

        Common options become fields, each scenario's options go to :attr:`scenario_options`,
        anything else to :attr:`extra`; ``-1`` sentinels are resolved from the profile.
        Raises :class:`SettingsError` with a one-line message on a bad value.
        """
        from toolclash.run import scenario_module

        modules = {name: scenario_module(name) for name in scenarios}
        known = {f.name for f in dataclasses.fields(cls)} - {"extra", "scenarios", "scenario_options"}
        per_scenario = {o.name for m in modules.values() for o in m.OPTIONS}
        kwargs: dict[str, Any] = {}
        extra: dict[str, Any] = {}
        for key, value in values.items():
            if key in known and value is not None:
                opt = OPTIONS_BY_NAME.get(key)
                kwargs[key] = _coerce(opt, value) if opt else value
            elif key not in known and key not in per_scenario:
                extra[key] = value
        profile = kwargs.get("profile") or "normal"
        kwargs["profile"] = profile
        if profile not in PROFILES:
            raise SettingsError(f"--profile {profile!r} is not one of {', '.join(PROFILES)}")
        for key, default in PROFILE_DEFAULTS[profile].items():
            if kwargs.get(key, -1.0) < 0:
                kwargs[key] = default
        if not kwargs.get("strategy") and len(modules) == 1:
            kwargs["strategy"] = next(iter(modules.values())).DEFAULT_STRATEGY
        options: dict[str, SimpleNamespace] = {}
        for name, module in modules.items():
            ns = SimpleNamespace(**{o.name: _coerce(o, values[o.name]) if values.get(o.name) is not None
                                    else o.default for o in module.OPTIONS})
            module.validate(ns)
            options[name] = ns
        settings = cls(**kwargs, scenarios=tuple(scenarios), scenario_options=options, extra=extra)
        settings.validate()
        return settings

    def stage_users(self) -> list[int]:
        """The ramp's agent counts, e.g. ``[5, 10, 25, 50, 100]``."""
        try:
            users = [int(part) for part in self.stages.split(",") if part.strip()]
        except ValueError:
            users = []
        if not users or any(u <= 0 for u in users):
            raise SettingsError(f"--stages {self.stages!r} must be positive agent counts separated by commas, "
                                "e.g. 5,10,25,50,100")
        return users

    def options_of(self, scenario: str) -> SimpleNamespace:
        """The options of *scenario* (attributes named as in its ``OPTIONS``)."""
        return self.scenario_options[scenario]

    def strategy_for(self, scenario: str) -> str:
        """The strategy *scenario* runs: the one asked for if the scenario knows it, else its default."""
        module = _module(scenario)
        return self.strategy if self.strategy in module.STRATEGIES else module.DEFAULT_STRATEGY

    def fault_for(self, scenario: str) -> str:
        """The planted fault *scenario* applies: the one asked for if the scenario knows it, else ``none``."""
        return self.fault if self.fault in _module(scenario).FAULTS else "none"

    def values(self) -> dict[str, Any]:
        """Every option as a flat mapping that :meth:`from_mapping` accepts (the password included)."""
        out = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)
               if f.name not in ("extra", "scenarios", "scenario_options")}
        for ns in self.scenario_options.values():
            out.update(vars(ns))
        return out

    def service_urls(self) -> dict[str, str]:
        """The services the user pointed at, by environment variable (``{"REDIS_URL": ...}``)."""
        return {opt.env: getattr(self, opt.name) for opt in OPTIONS
                if opt.name.endswith("_url") and getattr(self, opt.name)}

    def validate(self) -> None:
        """Raise :class:`SettingsError` if a value is out of range."""
        if self.profile not in PROFILES:
            raise SettingsError(f"--profile {self.profile!r} is not one of {', '.join(PROFILES)}")
        modules = [_module(name) for name in self.scenarios]
        strategies = sorted({st for m in modules for st in m.STRATEGIES})
        if self.strategy and self.strategy not in strategies:
            raise SettingsError(f"--strategy {self.strategy!r} is not one of {', '.join(strategies)}")
        faults = ["none", *sorted({f for m in modules for f in m.FAULTS})]
        if self.fault not in faults:
            raise SettingsError(f"--fault {self.fault!r} is not one of {', '.join(faults)}")
        positive = ("max_tries", "retry_deadline_s", "connect_timeout_s", "gate_p95_ms")
        for name in positive:
            if getattr(self, name) <= 0:
                raise SettingsError(f"{OPTIONS_BY_NAME[name].flag} must be greater than 0")
        if not 0.0 <= self.wait_min <= self.wait_max:
            raise SettingsError("--wait-min and --wait-max must satisfy 0 <= min <= max")
        if not 0.0 <= self.gate_success_rate <= 1.0 or not 0.0 <= self.gate_conflict_rate <= 1.0:
            raise SettingsError("--gate-success-rate and --gate-conflict-rate must be between 0 and 1")
        if self.tool_think_ms < 0 or self.retry_base_ms < 0 or self.retry_cap_ms < self.retry_base_ms:
            raise SettingsError("--tool-think-ms and --retry-base-ms must be >= 0 and --retry-cap-ms >= base")
        if self.sync not in (0, 1) or self.sync_parties < 0 or self.sync_timeout_s <= 0:
            raise SettingsError("--sync must be 0 or 1, --sync-parties >= 0 and --sync-timeout-s > 0")
        self.stage_users()  # raises on a bad --stages
        if self.stage_seconds <= 0 or self.stage_spawn_rate <= 0:
            raise SettingsError("--stage-seconds and --stage-spawn-rate must be greater than 0")
        if not 0.0 <= self.stage_gate_conflict_low <= 1.0 or not 0.0 <= self.stage_gate_conflict_high <= 1.0:
            raise SettingsError("--stage-gate-conflict-low and --stage-gate-conflict-high must be between 0 and 1")
        if self.run_id and not _RUN_ID_RE.fullmatch(self.run_id):
            raise SettingsError(f"--run-id {self.run_id!r} may hold only letters, digits, '.', '_' and '-'")
        for name, var in (("database_url", "DATABASE_URL"), ("auth_database_url", "AUTH_DATABASE_URL"),
                          ("pgbouncer_url", "PGBOUNCER_URL")):
            if getattr(self, name):
                check_database_url(getattr(self, name), var)
        for name, var, schemes in (("redis_url", "REDIS_URL", ("redis://",)),
                                   ("clickhouse_url", "CLICKHOUSE_URL", ("clickhouse://",))):
            url = getattr(self, name)
            if url and not url.startswith(schemes):
                raise SettingsError(f"{var} {mask_url(url)!r} must start with {' or '.join(schemes)}")

    def public(self) -> dict[str, Any]:
        """All settings as plain data with secrets masked (for options.json and summaries)."""
        out = self.values()
        for opt in OPTIONS:
            if opt.is_secret and isinstance(out.get(opt.name), str) and out[opt.name]:
                out[opt.name] = mask_url(out[opt.name])
        out["scenarios"] = list(self.scenarios)
        out["strategies"] = {name: self.strategy_for(name) for name in self.scenarios}
        out["faults"] = {name: self.fault_for(name) for name in self.scenarios}
        for key, value in self.extra.items():
            out[key] = mask_url(value) if isinstance(value, str) and "://" in value else value
        return out


def _module(scenario: str) -> Any:
    from toolclash.run import scenario_module

    return scenario_module(scenario)


def _coerce(opt: Option, value: Any) -> Any:
    if isinstance(value, opt.type):
        return value
    try:
        return opt.type(value)
    except (TypeError, ValueError):
        raise SettingsError(f"{opt.flag} expects a {opt.type.__name__}, got {value!r}") from None


def check_database_url(url: str, var: str = "DATABASE_URL") -> None:
    """Raise :class:`SettingsError` unless libpq accepts *url* as a PostgreSQL URL (never echoes a password)."""
    from psycopg2.extensions import parse_dsn

    hint = "use postgresql://user:password@host:port/dbname"
    if not url.startswith(("postgresql://", "postgres://")):
        raise SettingsError(f"{var} {mask_url(url)!r} is not a PostgreSQL URL; {hint}")
    try:
        parsed = parse_dsn(url)
    except Exception:  # noqa: BLE001 - libpq's message may quote the password
        raise SettingsError(f"{var} {mask_url(url)!r} is not a valid URL; {hint}") from None
    port = parsed.get("port")
    if port is not None and not (port.isdigit() and 0 < int(port) < 65536):
        raise SettingsError(f"{var} {mask_url(url)!r} has a port that is not a number from 1 to 65535; {hint}")


def mask_url(url: str) -> str:
    """Return ``url`` with its password replaced by ``***`` (user, host, port, path and query kept).

    Handles ``scheme://user:pass@host:port/path`` (an unencoded ``@`` or ``:`` in the password too),
    ``scheme://:pass@host`` and a ``password=`` query parameter.  Strings without a password come
    back unchanged.
    """
    scheme_sep = url.find("://")
    if scheme_sep < 0:
        return url
    head, rest = url[: scheme_sep + 3], url[scheme_sep + 3 :]
    # libpq reads the user info up to the last '@' before the path, so '?' and '#' may be in a password.
    slash = rest.find("/")
    authority = rest if slash < 0 else rest[:slash]
    at = authority.rfind("@")
    if at >= 0 and ":" in authority[:at]:
        user = authority[:at].split(":", 1)[0]
        rest = f"{user}:***@{rest[at + 1:]}"
    return head + re.sub(r"(?i)([?&;]password=)[^&;#]*", r"\1***", rest)
