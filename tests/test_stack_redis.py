"""RedisService of toolclash.stack against a real private redis-server: no mocks, polls with deadlines."""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from tests.test_stack import private_dir
from toolclash.stack import SERVICES, ServiceContext, Stack, mask_url

pytestmark = pytest.mark.xdist_group("stack-redis")
"""Under pytest-xdist, one worker runs this module: its module-scoped servers and runs are made once."""


@pytest.fixture(scope="module")
def redis_stack() -> Iterator[Stack]:
    s = Stack(services=("redis",))
    s.up(timeout=60)
    try:
        yield s
    finally:
        s.down()


def test_serves_with_a_password_on_loopback_only(redis_stack: Stack) -> None:
    url = redis_stack.env()["REDIS_URL"]
    assert re.fullmatch(r"redis://:[\w-]+@127\.0\.0\.1:\d+/0", url)
    client = redis.Redis.from_url(url, socket_timeout=2)
    try:
        assert client.ping() is True
        assert client.config_get("bind") == {"bind": "127.0.0.1"}
        assert client.config_get("protected-mode") == {"protected-mode": "yes"}
        assert client.config_get("appendonly") == {"appendonly": "no"}
        assert client.config_get("save") == {"save": ""}
    finally:
        client.close()
    port = redis_stack.status()["redis"]["port"]
    anonymous = redis.Redis(host="127.0.0.1", port=port, socket_timeout=2)
    with pytest.raises(redis.AuthenticationError):
        anonymous.ping()
    anonymous.close()
    with pytest.raises(OSError), socket.create_connection(("127.0.0.2", port), timeout=2):
        pass


def test_runs_unprivileged_and_status_masks_the_password(redis_stack: Stack) -> None:
    info = redis_stack.status()["redis"]
    url = redis_stack.env()["REDIS_URL"]
    assert info["running"] is True and info["url"] == mask_url(url) and "***" in info["url"]
    assert url.split(":")[2].split("@")[0] not in str(info)
    assert info["durable"] is False and any(n.startswith("non-durable: appendonly no") for n in info["notes"])
    if os.geteuid() == 0:  # as root, the server runs as the stack's unprivileged user
        assert Path(f"/proc/{info['pid']}").stat().st_uid != 0


def test_durable_keeps_acknowledged_writes_across_a_crash_and_restarts_on_the_same_port() -> None:
    state_dir = private_dir()
    s = Stack(state_dir, services=("redis",), durable=True)
    try:
        url = s.up(timeout=60)["REDIS_URL"]
        client = redis.Redis.from_url(url, socket_timeout=2)
        assert client.config_get("appendonly") == {"appendonly": "yes"}
        assert client.config_get("appendfsync") == {"appendfsync": "always"}
        client.set("toolclash:test", "kept")
        client.close()
        port = s.status()["redis"]["port"]
        Stack(state_dir, services=("redis",), durable=True)  # reopening sees the same server
        state = json.loads((state_dir / "stack.json").read_text())
        ctx = ServiceContext(state_dir, None, True, save=lambda: None)
        SERVICES["redis"](ctx, state["services"]["redis"]).kill()  # SIGKILL: no shutdown, no final flush
        assert s.status()["redis"]["running"] is False
        assert s.up(timeout=60)["REDIS_URL"] == url  # same port, same password
        assert s.status()["redis"]["port"] == port
        again = redis.Redis.from_url(url, socket_timeout=2)
        assert again.get("toolclash:test") == b"kept"
        again.close()
    finally:
        s.down()
        shutil.rmtree(state_dir, ignore_errors=True)
    assert s.status()["redis"]["running"] is False
