"""One typed settings object for a run; every common option is declared once, on its field.

Each field of :class:`Settings` carries its :class:`~toolclash.option.Option` (help, bounds, choices,
environment variable, group); :data:`OPTIONS` is read off the fields. The Locust plugin registers
those options, plus each scenario's own (declared in its :class:`~toolclash.scenario.Scenario`), with
Locust's parser, so they appear in the web UI and as environment variables; :meth:`Settings.from_mapping`
turns parsed values into validated settings. Nothing here touches the network or the disk.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any

from toolclash.metrics import DEFAULT_METRICS_PORT
from toolclash.nemesis.abort import parse_abort
from toolclash.nemesis.spec import NemesisError
from toolclash.nemesis.spec import parse as parse_nemesis
from toolclash.option import Option, SettingsError, check_database_url, mask_url
from toolclash.scenario import get as scenario

PROFILES = ("normal", "stress")

PROFILE_DEFAULTS: dict[str, dict[str, float]] = {
    # The test plan's *normal load*: agents think between tool calls.
    "normal": {"wait_min": 0.5, "wait_max": 1.5, "gate_conflict_rate": 0.05},
    # *Stress*: no think time at all.
    "stress": {"wait_min": 0.0, "wait_max": 0.0, "gate_conflict_rate": 0.20},
}
"""What ``-1`` means for these options, by ``--profile``."""

SMALL_STAGE = 10
"""A ramp stage of at most this many agents is gated at ``--stage-gate-conflict-low``, a larger one at ``…-high``."""

_TYPES = {"str": str, "int": int, "float": float}


def opt(default: Any, help: str, **kwargs: Any) -> Any:
    """A settings field and its option: ``name`` and ``type`` come from the field (see :data:`OPTIONS`)."""
    return field(default=default, repr=not kwargs.get("is_secret", False),
                 metadata={"option": {"default": default, "help": help, **kwargs}})


def _url(var: str, help: str) -> Any:
    return opt("", help, env_var=var, is_secret=True, group="services")


@dataclass(frozen=True, kw_only=True)
class Settings:
    """Validated settings of one run. Build with :meth:`from_mapping`."""

    # --- services: empty starts the embedded stack's own server for the run
    database_url: str = _url("DATABASE_URL", "PostgreSQL URL of your own database; empty starts a private "
                             "embedded server for the run. Only the 'toolclash' schema is ever touched.")
    auth_database_url: str = _url("AUTH_DATABASE_URL", "PostgreSQL URL of your own auth-service database "
                                  "(cross-service scenario); empty starts a second private server")
    redis_url: str = _url("REDIS_URL", "Redis URL of your own server (queue scenario); empty starts a private one")
    clickhouse_url: str = _url("CLICKHOUSE_URL", "ClickHouse URL (native protocol, clickhouse://user:pw@host:9000/db)"
                               " of your own server (analytics); empty starts a private one")
    pgbouncer_url: str = _url("PGBOUNCER_URL", "PostgreSQL URL of your own PgBouncer in front of DATABASE_URL "
                              "(pool scenario); empty starts a private one")
    # --- what the agents do
    target: str = opt("", "your own platform instead of toolclash's reference tools: a TOML target file (each tool "
                      "call as an HTTP request or SQL statements, and how to read the final state) or "
                      "python:<module> (a client module of yours); see docs/your-platform.md")
    strategy: str = opt("", "strategy of the scenario's tool (each scenario lists its own; empty: the scenario's "
                        "default). A strategy only some scenarios know applies to those, the rest keep their default")
    fault: str = opt("none", "planted fault that a check must catch (each scenario lists its own)")
    profile: str = opt("normal", "load profile: normal (agents think between calls) or stress (no think time); "
                       "sets default wait time and conflict-rate gate", choices=PROFILES, locust_builtin=True)
    tool_think_ms: float = opt(0.0, "pause between an agent's read and its write inside one call (an agent "
                               "reasoning over what it read); widens race windows", min=0)
    wait_min: float = opt(-1.0, "least think time between tool calls in seconds (-1: profile default)")
    wait_max: float = opt(-1.0, "most think time between tool calls in seconds (-1: profile default)")
    max_tries: int = opt(10, "attempts per call before giving up on retryable conflicts", min=1)
    retry_base_ms: float = opt(2.0, "first backoff cap in ms (full jitter, doubles per retry)", min=0)
    retry_cap_ms: float = opt(200.0, "largest backoff cap in ms", min=0)
    retry_deadline_s: float = opt(5.0, "overall deadline of one call including retries, in seconds", min=1e-9)
    connect_timeout_s: float = opt(10.0, "deadline for opening one database connection", min=1e-9)
    sync: int = opt(0, "1: before every tool call each agent waits at a barrier until all --sync-parties agents "
                    "(on every worker) are there, so they call at the same instant; 0: off", min=0, max=1)
    sync_parties: int = opt(0, "agents a barrier waits for (0: the run's user count, -u)", min=0)
    sync_timeout_s: float = opt(10.0, "longest wait at a barrier before the agent goes on alone (counted)", min=1e-9)
    # --- SLA gates
    gate_conflict_rate: float = opt(-1.0, "SLA gate: most conflicts per attempt (-1: 0.05 for --profile normal, "
                                    "0.20 for stress)", max=1, group="gates")
    gate_p95_ms: float = opt(2000.0, "SLA gate: most P95 call latency including retries, in ms", min=1e-9,
                             group="gates")
    gate_success_rate: float = opt(0.999, "SLA gate: least share of calls that succeed after retries", min=0,
                                   max=1, group="gates")
    gate_in_doubt_rate: float = opt(0.001, "SLA gate: most share of calls left in doubt (no answer whether they "
                                    "took effect), of ok + failed + in-doubt calls; calls cut short by the run's own "
                                    "stop and those an --inject option put in doubt are counted apart", min=0, max=1,
                                    group="gates")
    gate_recovery_s: float = opt(2.0, "SLA gate: most seconds until throughput is back at 0.9 of its rate before a "
                                 "disturbance: from the end of each fault of --nemesis, and from the start of each "
                                 "deadlock cascade", min=1e-9, group="gates")
    # --- faults on a schedule, circuit breakers, emergency stop (docs/faults.md)
    nemesis: str = opt("", "faults on a schedule, e.g. 'stop postgres at 5s for 3s; latency redis 100ms±20ms from 10s "
                       "to 25s' (kinds: crash, restart, stop, pause, latency, bandwidth, reset, loss, partition, "
                       "worker_kill; see docs/faults.md)", group="faults")
    nemesis_file: str = opt("", "file of faults, one per line, same syntax as --nemesis ('#' starts a comment)",
                            group="faults")
    nemesis_hosts: str = opt("", "the hosts that loss and partition faults name, as name=NETNS,… (network namespaces "
                             "of this machine, e.g. worker1=ns-w1,master=ns-m)", group="faults")
    abort_on: str = opt("", "emergency stop when a condition holds: 'error-rate>0.5 for 5s; unreachable postgres for "
                        "10s; invariant' (every worker stops, faults are healed, the verdict says why)",
                        group="faults")
    breaker_failures: int = opt(5, "circuit breaker: connection failures in a row after which an agent stops "
                                "calling (0: no breaker)", min=0, group="faults")
    breaker_open_s: float = opt(0.5, "circuit breaker: seconds an open breaker waits before it lets one call "
                                "through", min=0.01, group="faults")
    # --- ramp (locustfiles/mixed.py)
    stages: str = opt("5,10,25,50,100", "ramp shape: agents at each stage, comma-separated", group="ramp")
    stage_seconds: float = opt(30.0, "ramp shape: length of each stage in seconds", min=1e-9, group="ramp")
    stage_spawn_rate: float = opt(10.0, "ramp shape: agents started (or stopped) per second between stages",
                                  min=1e-9, group="ramp")
    stage_gate_conflict_low: float = opt(0.05, f"per-stage SLA gate: most conflicts per attempt in a stage of at "
                                         f"most {SMALL_STAGE} agents", min=0, max=1, group="gates")
    stage_gate_conflict_high: float = opt(0.20, f"per-stage SLA gate: most conflicts per attempt in a stage of "
                                          f"more than {SMALL_STAGE} agents", min=0, max=1, group="gates")
    # --- the run directory
    reports_dir: str = opt("reports", "where run directories reports/<run-id>/ are written")
    run_id: str = opt("", "name of this run's directory (default: time stamp + random suffix)")
    report: str = opt("html", "after the verdict: 'html' writes report.html (a plot of every figure; a second or "
                      "two), 'none' skips it (checks.json, junit.xml and summary.md are always written)",
                      choices=("html", "none"))
    # --- observability
    metrics_port: int = opt(-1, f"Prometheus exporter port on the master (or the single process); -1: the port "
                            f"PROMETHEUS_URL's job 'toolclash' scrapes, else {DEFAULT_METRICS_PORT}; 0: no exporter",
                            group="observability")
    metrics_host: str = opt("127.0.0.1", "address the Prometheus exporter binds (0.0.0.0 inside a container)",
                            group="observability")
    metrics_linger_s: float = opt(0.0, "at the end, keep the exporter up until Prometheus has scraped the verdict "
                                  "three times, at most this many seconds (0: do not wait)", min=0,
                                  group="observability")
    progress_s: float = opt(5.0, "headless runs: one progress line on stderr every this many seconds (agents, "
                            "calls/s, conflict rate, retries, in-doubt calls, gates at risk); 0: off", min=0,
                            group="observability")
    prometheus_url: str = opt("", "Prometheus that scrapes this run (http://host:9090): its 'toolclash' target "
                              "names the exporter port; empty: none", env_var="PROMETHEUS_URL", group="observability")
    baseline: str = opt("", "run directory (reports/<run-id>) to compare this run with; a throughput drop or P95 "
                        "rise beyond the tolerances is a missed gate", group="gates")
    baseline_throughput_drop: float = opt(0.10, "largest tolerated throughput drop against --baseline", min=0,
                                          max=1, group="gates")
    baseline_p95_rise: float = opt(0.25, "largest tolerated P95 rise against --baseline", min=0, group="gates")

    # --- not options
    scenarios: tuple[str, ...] = ("credits",)
    """Scenarios of the run, in the order of the locustfile's ``setup()``."""
    scenario_options: Mapping[str, SimpleNamespace] = field(default_factory=dict)
    """Each scenario's own options (declared in its :class:`~toolclash.scenario.Scenario`)."""
    extra: Mapping[str, Any] = field(default_factory=dict)
    """Options declared nowhere here (Locust's own and others), passed through untouched."""
    target_spec: Any = field(default=None, repr=False)
    """The loaded :data:`toolclash.targets.Target` when ``--target`` is given (its file's content travels to
    workers in :meth:`values` as ``target_data``: they need not have the file)."""

    @classmethod
    def from_mapping(cls, values: Mapping[str, Any], scenarios: Sequence[str] = ("credits",)) -> Settings:
        """Validate parsed option values (Locust's ``parsed_options`` as a dict, or any mapping).

        Common options become fields, each scenario's options go to :attr:`scenario_options`,
        anything else to :attr:`extra`; ``-1`` sentinels are resolved from the profile.
        Raises :class:`SettingsError` with a one-line message on a bad value.
        """
        found = {name: scenario(name) for name in scenarios}
        per_scenario = {o.name for sc in found.values() for o in sc.options}
        kwargs: dict[str, Any] = {}
        extra: dict[str, Any] = {}
        for key, value in values.items():
            option = OPTIONS_BY_NAME.get(key)
            if option is not None:
                if value is not None:
                    kwargs[key] = option.coerce(value)
            elif key not in per_scenario and key not in _NOT_OPTIONS:
                extra[key] = value
        profile = kwargs.setdefault("profile", "normal")
        for key, default in PROFILE_DEFAULTS[profile].items():
            if kwargs.get(key, -1.0) < 0:
                kwargs[key] = default
        if not kwargs.get("strategy") and len(found) == 1:
            kwargs["strategy"] = next(iter(found.values())).default_strategy
        options = {name: sc.options_from(values) for name, sc in found.items()}
        if kwargs.get("target"):
            from toolclash.targets import load as load_target

            kwargs["target_spec"] = load_target(kwargs["target"], scenarios, values.get("target_data"))
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

    def options_of(self, name: str) -> SimpleNamespace:
        """The options of *scenario* (attributes named as in its ``options``)."""
        return self.scenario_options[name]

    def strategy_for(self, name: str) -> str:
        """The strategy *scenario* runs: the one asked for if the scenario knows it, else its default; with
        ``--target``, the target's kind (``http``, ``sql``, ``python``)."""
        if self.target_spec is not None:
            return str(self.target_spec.kind)
        return scenario(name).strategy_for(self.strategy)

    def fault_for(self, name: str) -> str:
        """The planted fault *scenario* applies: the one asked for if the scenario knows it, else ``none``."""
        return scenario(name).fault_for(self.fault)

    def values(self) -> dict[str, Any]:
        """Every option as a flat mapping that :meth:`from_mapping` accepts (the passwords included)."""
        out = {o.name: getattr(self, o.name) for o in OPTIONS}
        for ns in self.scenario_options.values():
            out.update(vars(ns))
        data = getattr(self.target_spec, "data", None)
        if data is not None:
            out["target_data"] = dict(data)
        return out

    def service_urls(self) -> dict[str, str]:
        """The services the user pointed at, by environment variable (``{"REDIS_URL": ...}``)."""
        return {o.env: getattr(self, o.name) for o in OPTIONS if o.group == "services" and getattr(self, o.name)}

    def validate(self) -> None:
        """Raise :class:`SettingsError` if values do not fit together (single values were checked on parsing)."""
        found = [scenario(name) for name in self.scenarios]
        strategies = sorted({st for sc in found for st in sc.strategies})
        if self.strategy and self.strategy not in strategies:
            raise SettingsError(f"--strategy {self.strategy!r} is not one of {', '.join(strategies)}")
        faults = ["none", *sorted({f for sc in found for f in sc.faults})]
        if self.fault not in faults:
            raise SettingsError(f"--fault {self.fault!r} is not one of {', '.join(faults)}")
        if self.target and self.fault != "none":
            raise SettingsError(f"--fault {self.fault} plants a fault in toolclash's own tools; with --target your "
                                "platform is what is tested: leave --fault at none")
        if not 0.0 <= self.wait_min <= self.wait_max:
            raise SettingsError("--wait-min and --wait-max must satisfy 0 <= min <= max")
        if not 0.0 <= self.gate_conflict_rate <= 1.0:
            raise SettingsError("--gate-conflict-rate must be between 0 and 1")
        if self.retry_cap_ms < self.retry_base_ms:
            raise SettingsError("--retry-cap-ms must be at least --retry-base-ms")
        self.stage_users()  # raises on a bad --stages
        try:  # the schedule's syntax (its file is read, and its targets checked, where the run starts)
            parse_nemesis(self.nemesis)
            parse_abort(self.abort_on)
        except NemesisError as exc:
            raise SettingsError(str(exc)) from None
        if not -1 <= self.metrics_port <= 65535:
            raise SettingsError(f"--metrics-port {self.metrics_port} is not a port (1-65535, 0: off, -1: auto)")
        if self.run_id and not _RUN_ID_RE.fullmatch(self.run_id):
            raise SettingsError(f"--run-id {self.run_id!r} may hold only letters, digits, '.', '_' and '-'")
        for name, var in (("database_url", "DATABASE_URL"), ("auth_database_url", "AUTH_DATABASE_URL"),
                          ("pgbouncer_url", "PGBOUNCER_URL")):
            if getattr(self, name):
                check_database_url(getattr(self, name), var)
        for name, var, schemes in (("redis_url", "REDIS_URL", ("redis://",)),
                                   ("clickhouse_url", "CLICKHOUSE_URL", ("clickhouse://",)),
                                   ("prometheus_url", "PROMETHEUS_URL", ("http://", "https://"))):
            url = getattr(self, name)
            if url and not url.startswith(schemes):
                raise SettingsError(f"{var} {mask_url(url)!r} must start with {' or '.join(schemes)}")

    def public(self) -> dict[str, Any]:
        """All settings as plain data with secrets masked (for options.json and summaries)."""
        out = self.values()
        out.pop("target_data", None)
        if self.target_spec is not None:
            out["target_spec"] = self.target_spec.describe()
        for o in OPTIONS:
            if o.is_secret and isinstance(out.get(o.name), str) and out[o.name]:
                out[o.name] = mask_url(out[o.name])
        out["scenarios"] = list(self.scenarios)
        out["strategies"] = {name: self.strategy_for(name) for name in self.scenarios}
        out["faults"] = {name: self.fault_for(name) for name in self.scenarios}
        for key, value in self.extra.items():
            out[key] = mask_url(value) if isinstance(value, str) and "://" in value else value
        return out


_NOT_OPTIONS = frozenset({"scenarios", "scenario_options", "extra", "target_spec", "target_data"})

OPTIONS: tuple[Option, ...] = tuple(
    Option(name=f.name, type=_TYPES[str(f.type)], **f.metadata["option"])
    for f in dataclasses.fields(Settings) if "option" in f.metadata)
"""Every common option, in the order of :class:`Settings`' fields."""

OPTIONS_BY_NAME = {o.name: o for o in OPTIONS}

_RUN_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")

__all__ = ["OPTIONS", "PROFILES", "Option", "Settings", "SettingsError", "mask_url"]
