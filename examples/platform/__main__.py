"""``python -m examples.platform``: start the example platform under gunicorn (gevent workers), in the foreground.

    python -m examples.platform --database-url postgresql://user:pw@127.0.0.1:5432/db --variant racy --port 8000

It creates its schema (``platform``) if needed. Stop it with Ctrl-C. See docs/your-platform.md.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m examples.platform", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--database-url", default=os.environ.get("PLATFORM_DATABASE_URL", ""),
                        help="PostgreSQL URL the platform keeps its tables in (env PLATFORM_DATABASE_URL)")
    parser.add_argument("--variant", choices=("correct", "racy"), default="correct",
                        help="correct: atomic writes, idempotency keys honoured; racy: read-modify-write "
                        "across two statements, no lock, idempotency keys ignored")
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=8000, help="port to listen on (default 8000)")
    parser.add_argument("--workers", type=int, default=2, help="gunicorn worker processes (default 2)")
    parser.add_argument("--think-ms", type=float, default=0.0,
                        help="racy: pause between the read and the write (a slower service; widens races)")
    parser.add_argument("--delay-ms", type=float, default=0.0,
                        help="with --delay-every: answer that much later, after committing")
    parser.add_argument("--delay-every", type=int, default=0, help="delay every n-th write's answer (0: none)")
    args = parser.parse_args(argv)
    if not args.database_url.startswith(("postgresql://", "postgres://")):
        parser.error("--database-url (or PLATFORM_DATABASE_URL) must be a postgresql:// URL")
    os.environ.update(PLATFORM_DATABASE_URL=args.database_url, PLATFORM_VARIANT=args.variant,
                      PLATFORM_THINK_MS=str(args.think_ms), PLATFORM_DELAY_MS=str(args.delay_ms),
                      PLATFORM_DELAY_EVERY=str(args.delay_every))
    argv_gunicorn = [sys.executable, "-m", "gunicorn", "--chdir", str(ROOT), "--worker-class", "gevent",
                     "--workers", str(args.workers), "--worker-connections", "1000", "--bind",
                     f"{args.host}:{args.port}", "--graceful-timeout", "5", "--keep-alive", "30",
                     "--log-level", "warning", "examples.platform.app:create_app()"]
    os.execv(sys.executable, argv_gunicorn)
    return 0  # not reached


if __name__ == "__main__":
    sys.exit(main())
