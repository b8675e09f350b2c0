"""How an option is declared (once), validated and shown; URL helpers that never echo a password.

An :class:`Option` is the single declaration of one command-line option: its type, default, help,
bounds, choices, group, environment variable and whether it is a secret. The Locust plugin registers
it with Locust's parser (flag, environment variable, web UI field), :mod:`toolclash.settings` turns
parsed values into typed settings with it, and ``python -m toolclash.options`` lists it. Pure data:
nothing here touches the network or the disk.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any


class SettingsError(ValueError):
    """A bad option value. The message is one line: what is wrong and how to fix it."""


@dataclass(frozen=True)
class Option:
    """One command-line option, declared once for Locust's parser, the web UI, the environment and the docs."""

    name: str
    """Attribute name; the flag is ``--`` + the name with ``-`` for ``_``."""
    type: type
    default: Any
    help: str
    env_var: str | None = None
    """Environment variable; default ``TOOLCLASH_<NAME>``."""
    choices: tuple[str, ...] | None = None
    is_secret: bool = False
    """Masked in the web UI, in logs and in every file the run writes."""
    locust_builtin: bool = False
    """Locust already declares this flag (``--profile``): reuse it rather than declare it again."""
    min: float | None = None
    """Least value allowed (inclusive), checked by :meth:`check`."""
    max: float | None = None
    """Largest value allowed (inclusive)."""
    group: str = "run"
    """Heading it is listed under (``run``, ``gates``, ``ramp``, ``observability``, a scenario's name…)."""

    @property
    def flag(self) -> str:
        return "--" + self.name.replace("_", "-")

    @property
    def env(self) -> str:
        return self.env_var or "TOOLCLASH_" + self.name.upper()

    def coerce(self, value: Any) -> Any:
        """*value* as this option's type, checked against its choices and bounds (:class:`SettingsError`)."""
        if not isinstance(value, self.type) or (self.type is int and isinstance(value, bool)):
            try:
                value = self.type(value)
            except (TypeError, ValueError):
                raise SettingsError(f"{self.flag} expects a {self.type.__name__}, got {value!r}") from None
        self.check(value)
        return value

    def check(self, value: Any) -> None:
        if self.choices is not None and value not in self.choices:
            raise SettingsError(f"{self.flag} {value!r} is not one of {', '.join(c for c in self.choices if c)}")
        if self.min is not None and value < self.min:
            raise SettingsError(f"{self.flag} must be at least {_num(self.min)}, got {_num(value)}")
        if self.max is not None and value > self.max:
            raise SettingsError(f"{self.flag} must be at most {_num(self.max)}, got {_num(value)}")


def _num(value: Any) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)


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
