"""The services of one run, by environment variable, and connections tagged with the run.

Locust-free: the Locust plugin, tests and the benchmark build one from the same URLs.
"""

from __future__ import annotations

from typing import Any

from toolclash import db


class BackendError(RuntimeError):
    """A service the scenario needs is not configured (one-line message)."""


def application_name(run_id: str, who: str) -> str:
    """The ``application_name`` every session of a run carries (how leftovers are found)."""
    return f"tc:{run_id}:{who}"[:63]


class Backend:
    """The services of one run: URLs by environment variable (``DATABASE_URL``, ``REDIS_URL`` …) and the run id."""

    def __init__(self, urls: dict[str, str], run_id: str = "", connect_timeout_s: float = 10.0) -> None:
        self.urls = dict(urls)
        self.run_id = run_id
        self.connect_timeout_s = connect_timeout_s

    def url(self, env_var: str) -> str:
        try:
            return self.urls[env_var]
        except KeyError:
            raise BackendError(f"{env_var} is not set and the embedded stack did not start that service; "
                               f"set {env_var} or leave the scenario's services to the embedded stack") from None

    def pg(self, who: str = "admin", env_var: str = "DATABASE_URL") -> Any:
        """A new PostgreSQL connection to *env_var*'s server, named ``tc:<run>:<who>``."""
        return db.connect(self.url(env_var), timeout=self.connect_timeout_s,
                          application_name=application_name(self.run_id, who))
