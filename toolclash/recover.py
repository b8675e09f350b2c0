"""Recovery of cross-service operations left in doubt (the crossservice scenario).

    python -m toolclash.recover [--database-url URL] [--auth-database-url URL] [--min-age-s S] [--prepared-only]

(URLs default to ``DATABASE_URL`` and ``AUTH_DATABASE_URL``.) It runs at the start of every
crossservice run, during the run (prepared transactions only) and after the load stopped.

* **Two-phase commit.** Every prepared transaction ``xs:<op>:m`` (main) or ``xs:<op>:a`` (auth) is
  resolved from the coordinator's decision log in main (``toolclash.xs_decisions``): ``commit`` →
  ``COMMIT PREPARED``, otherwise ``ROLLBACK PREPARED`` — each on the server where it was prepared.
  Presumed abort: with no decision, recovery first writes ``abort`` into the log. The log's primary key
  makes the first decision win, so a coordinator that is still alive and recovery never disagree, and
  this part is safe while agents run (``--min-age-s`` leaves young transactions to their coordinator).
* **Sagas** (run it when no agent is running): a saga still ``debited`` whose grant is in force in auth
  is finished (``done``); any other ``debited`` or ``compensating`` saga is compensated (revoke, refund;
  both idempotent).

Afterwards ``pg_prepared_xacts`` holds no ``xs:`` transaction on either server. Exit codes: 0 done,
1 some in-doubt transaction could not be resolved, 2 could not run (one line saying why).
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from typing import Any, NoReturn

import psycopg2

# The logic lives with the scenario (toolclash.tools.crossservice.recovery); this module is its command line,
# and its docstring is the command's --help.
from toolclash.tools.crossservice.coordinator import ensure_schemas
from toolclash.tools.crossservice.recovery import prepared, recover, resolve_prepared, resolve_sagas

__all__ = ["main", "prepared", "recover", "resolve_prepared", "resolve_sagas"]


# ------------------------------------------------------------------------------------------------ CLI


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        self.exit(2, f"toolclash.recover: {message} (see --help)\n")


def main(argv: Sequence[str] | None = None) -> int:
    from toolclash import db
    from toolclash.settings import SettingsError, check_database_url

    parser = _Parser(prog="python -m toolclash.recover", description=__doc__,
                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--database-url", default=os.environ.get("DATABASE_URL", ""),
                        help="main PostgreSQL (default: $DATABASE_URL)")
    parser.add_argument("--auth-database-url", default=os.environ.get("AUTH_DATABASE_URL", ""),
                        help="auth PostgreSQL (default: $AUTH_DATABASE_URL)")
    parser.add_argument("--min-age-s", type=float, default=0.0,
                        help="leave prepared transactions younger than this to their coordinator (default 0)")
    parser.add_argument("--prepared-only", action="store_true",
                        help="resolve prepared transactions only, not sagas (safe while agents run)")
    args = parser.parse_args(argv)
    conns: list[Any] = []
    try:
        for var, url in (("DATABASE_URL", args.database_url), ("AUTH_DATABASE_URL", args.auth_database_url)):
            if not url:
                raise SettingsError(f"{var} is not set; pass --{var.lower().replace('_', '-')} or export {var}")
            check_database_url(url, var)
            conns.append(db.connect(url, application_name="toolclash:recover"))
        main_conn, auth_conn = conns
        ensure_schemas(main_conn, auth_conn)
        counts = recover(main_conn, auth_conn, min_age_s=args.min_age_s, sagas=not args.prepared_only)
        left = {"main": len(prepared(main_conn)), "auth": len(prepared(auth_conn))}
    except (SettingsError, db.ConnectError) as exc:
        print(f"toolclash.recover: {exc}", file=sys.stderr)
        return 2
    except psycopg2.Error as exc:
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        print(f"toolclash.recover: {first}; check both databases and retry", file=sys.stderr)
        return 2
    finally:
        for conn in conns:
            db.close_quietly(conn)
    print("recovered: " + ", ".join(f"{k} {v}" for k, v in counts.items())
          + f"; prepared left: main {left['main']}, auth {left['auth']}")
    return 1 if left["main"] + left["auth"] > 0 and not args.min_age_s else 0


if __name__ == "__main__":
    sys.exit(main())
