"""Embedded local stack: private real servers on free ports.

``Stack`` (:mod:`.core`) owns a list of services that live in one *state dir*: data, logs and
``stack.json`` (the record of what this stack started, including the generated passwords; mode 0600).
Reopening ``Stack(state_dir=same_dir)`` in another process sees the running services, so the CLI
(:mod:`.cli`) works across invocations::

    python -m toolclash.stack up      [--dir DIR] [--durable]
    eval "$(python -m toolclash.stack env)"
    python -m toolclash.stack status
    python -m toolclash.stack down

The servers listen on 127.0.0.1 only, on ports picked free at start.  When run as root the
servers run as an unprivileged OS user (``postgres`` if it exists, else a system user
``toolclash`` created on demand).  Unless ``durable=True`` PostgreSQL runs with ``fsync=off,
synchronous_commit=off, full_page_writes=off``: fast, but a crash of the machine may lose data.

Modules: :mod:`.process` (pids, ports, signals), :mod:`.daemon` (the base of every server: pid file,
start on a free port, wait until ready, stop, crash, pause), one module per server (:mod:`.postgres`,
:mod:`.pgbouncer`, :mod:`.redis`, :mod:`.clickhouse`, :mod:`.prometheus`), :mod:`.exporters` (Debian's
Prometheus exporters a run starts), :mod:`.control` (fault injection on a running server found from its
URL), :mod:`.core` (``Stack``, ``SERVICES``).

Nothing happens at import time: no subprocess, no file reads, no connections.

To add a service: subclass :class:`~.daemon.Service` in a module of its own (``name``, ``env_var``,
``title``, ``owns``, ``url``, ``configure``, ``launch``, ``probe``) and add it to ``SERVICES``.
"""

from toolclash.option import mask_url
from toolclash.stack.cli import main
from toolclash.stack.clickhouse import ClickHouseService, find_clickhouse_server
from toolclash.stack.control import NotLocalError, ServerControl
from toolclash.stack.core import SERVICES, Stack
from toolclash.stack.daemon import Service, ServiceContext
from toolclash.stack.pgbouncer import PgBouncerService
from toolclash.stack.postgres import AuthPostgresService, PostgresService, find_pg_bindir
from toolclash.stack.process import RunAs, StackError
from toolclash.stack.process import check_traversable as _check_traversable
from toolclash.stack.process import resolve_run_as as _resolve_run_as
from toolclash.stack.prometheus import PrometheusService
from toolclash.stack.redis import RedisService

__all__ = [
    "SERVICES",
    "AuthPostgresService",
    "ClickHouseService",
    "NotLocalError",
    "PgBouncerService",
    "PostgresService",
    "PrometheusService",
    "RedisService",
    "RunAs",
    "ServerControl",
    "Service",
    "ServiceContext",
    "Stack",
    "StackError",
    "_check_traversable",
    "_resolve_run_as",
    "find_clickhouse_server",
    "find_pg_bindir",
    "main",
    "mask_url",
]
