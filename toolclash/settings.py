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
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

STRATEGIES = ("naive", "check_then_act", "atomic", "pessimistic", "optimistic", "repeatable_read", "serializable")
"""Credit-deduction strategies. ``naive`` and ``check_then_act`` are the known-bad baselines."""

FAULTS = ("none", "ambiguous_as_fail", "ack_before_commit", "leak_session")
"""Planted faults of the credits tool (see README): each must make a check fail."""

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
    Option("strategy", str, "atomic", "credit-deduction strategy (naive and check_then_act are known-bad)",
           choices=STRATEGIES),
    Option("fault", str, "none", "planted fault that a check must catch", choices=FAULTS),
    Option("profile", str, "normal", "load profile: normal (agents think between calls) or stress (no think "
           "time); sets default wait time and conflict-rate gate", choices=PROFILES,
           locust_builtin=True),
    Option("accounts", int, 5, "number of credit accounts agents deduct from"),
    Option("account_choice", str, "uniform", "how agents pick an account: uniform, or hotspot (most calls "
           "go to account 1)", choices=("uniform", "hotspot")),
    Option("hot_fraction", float, 0.8, "share of calls sent to account 1 with --account-choice hotspot"),
    Option("initial_balance", int, 1_000_000, "starting balance of every account (credits)"),
    Option("amount_min", int, 1, "smallest deduction (credits)"),
    Option("amount_max", int, 10, "largest deduction (credits)"),
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
    strategy: str = "atomic"
    """Credit-deduction strategy, one of :data:`STRATEGIES`."""
    fault: str = "none"
    """Planted fault, one of :data:`FAULTS`."""
    profile: str = "normal"
    """Load profile, one of :data:`PROFILES`."""
    accounts: int = 5
    account_choice: str = "uniform"
    hot_fraction: float = 0.8
    initial_balance: int = 1_000_000
    amount_min: int = 1
    amount_max: int = 10
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
    reports_dir: str = "reports"
    run_id: str = ""
    extra: Mapping[str, Any] = field(default_factory=dict)
    """Options that are not declared here (other scenarios' own), passed through untouched."""

    @classmethod
    def from_mapping(cls, values: Mapping[str, Any]) -> Settings:
        """Validate parsed option values (Locust's ``parsed_options`` as a dict, or any mapping).

        Unknown keys go to :attr:`extra`; ``-1`` sentinels are resolved from the profile.
        Raises :class:`SettingsError` with a one-line message on a bad value.
        """
        known = {f.name for f in dataclasses.fields(cls)} - {"extra"}
        kwargs: dict[str, Any] = {}
        extra: dict[str, Any] = {}
        for key, value in values.items():
            if key in known and value is not None:
                opt = OPTIONS_BY_NAME.get(key)
                kwargs[key] = _coerce(opt, value) if opt else value
            elif key not in known:
                extra[key] = value
        profile = kwargs.get("profile") or "normal"
        kwargs["profile"] = profile
        if profile not in PROFILES:
            raise SettingsError(f"--profile {profile!r} is not one of {', '.join(PROFILES)}")
        for key, default in PROFILE_DEFAULTS[profile].items():
            if kwargs.get(key, -1.0) < 0:
                kwargs[key] = default
        settings = cls(**kwargs, extra=extra)
        settings.validate()
        return settings

    def validate(self) -> None:
        """Raise :class:`SettingsError` if a value is out of range."""
        for name, choices in (("strategy", STRATEGIES), ("fault", FAULTS), ("profile", PROFILES),
                              ("account_choice", ("uniform", "hotspot"))):
            value = getattr(self, name)
            if value not in choices:
                raise SettingsError(f"{OPTIONS_BY_NAME[name].flag} {value!r} is not one of {', '.join(choices)}")
        positive = ("accounts", "max_tries", "retry_deadline_s", "connect_timeout_s", "gate_p95_ms")
        for name in positive:
            if getattr(self, name) <= 0:
                raise SettingsError(f"{OPTIONS_BY_NAME[name].flag} must be greater than 0")
        if not 1 <= self.amount_min <= self.amount_max:
            raise SettingsError("--amount-min and --amount-max must satisfy 1 <= min <= max")
        if self.initial_balance < 0:
            raise SettingsError("--initial-balance must be 0 or more")
        if not 0.0 <= self.hot_fraction <= 1.0:
            raise SettingsError("--hot-fraction must be between 0 and 1")
        if not 0.0 <= self.wait_min <= self.wait_max:
            raise SettingsError("--wait-min and --wait-max must satisfy 0 <= min <= max")
        if not 0.0 <= self.gate_success_rate <= 1.0 or not 0.0 <= self.gate_conflict_rate <= 1.0:
            raise SettingsError("--gate-success-rate and --gate-conflict-rate must be between 0 and 1")
        if self.tool_think_ms < 0 or self.retry_base_ms < 0 or self.retry_cap_ms < self.retry_base_ms:
            raise SettingsError("--tool-think-ms and --retry-base-ms must be >= 0 and --retry-cap-ms >= base")
        if self.run_id and not _RUN_ID_RE.fullmatch(self.run_id):
            raise SettingsError(f"--run-id {self.run_id!r} may hold only letters, digits, '.', '_' and '-'")
        if self.database_url:
            check_database_url(self.database_url)

    def public(self) -> dict[str, Any]:
        """All settings as plain data with secrets masked (for options.json and summaries)."""
        out = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name != "extra"}
        out["database_url"] = mask_url(self.database_url) if self.database_url else ""
        for key, value in self.extra.items():
            out[key] = mask_url(value) if isinstance(value, str) and "://" in value else value
        return out


def _coerce(opt: Option, value: Any) -> Any:
    if isinstance(value, opt.type):
        return value
    try:
        return opt.type(value)
    except (TypeError, ValueError):
        raise SettingsError(f"{opt.flag} expects a {opt.type.__name__}, got {value!r}") from None


def check_database_url(url: str) -> None:
    """Raise :class:`SettingsError` unless libpq accepts *url* as a PostgreSQL URL (never echoes a password)."""
    from psycopg2.extensions import parse_dsn

    hint = "use postgresql://user:password@host:port/dbname"
    if not url.startswith(("postgresql://", "postgres://")):
        raise SettingsError(f"DATABASE_URL {mask_url(url)!r} is not a PostgreSQL URL; {hint}")
    try:
        parsed = parse_dsn(url)
    except Exception:  # noqa: BLE001 - libpq's message may quote the password
        raise SettingsError(f"DATABASE_URL {mask_url(url)!r} is not a valid URL; {hint}") from None
    port = parsed.get("port")
    if port is not None and not (port.isdigit() and 0 < int(port) < 65536):
        raise SettingsError(f"DATABASE_URL {mask_url(url)!r} has a port that is not a number from 1 to 65535; {hint}")


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
