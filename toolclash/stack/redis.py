"""The stack's Redis (``REDIS_URL``): Debian's redis-server, daemonized, with a generated password."""

from __future__ import annotations

import os
import secrets
import shutil
import time
from pathlib import Path

from toolclash.stack.daemon import Launched, Service
from toolclash.stack.process import LOOPBACK, StackError, port_comes_free


class RedisService(Service):
    """A private Redis: 127.0.0.1 only, protected mode, a generated ``requirepass``, run as the stack's user.

    Not durable by default (no AOF, no RDB snapshots: a restart starts empty). ``durable=True`` turns on
    ``appendonly yes`` with ``appendfsync always``: every acknowledged write survives a crash of the server.
    A restart reuses the recorded port when it is still free, so clients' URLs stay valid.
    """

    name = "redis"
    env_var = "REDIS_URL"
    title = "Redis"
    PID_FROM_STATE = True
    EXIT_GRACE_S = 5.0  # its process title names the port once it listens

    @property
    def data_dir(self) -> Path:
        return self.dir / "data"

    @property
    def log_file(self) -> Path:
        return self.dir / "redis.log"

    @property
    def pid_file(self) -> Path:
        return self.dir / "redis.pid"

    @property
    def conf_file(self) -> Path:
        return self.dir / "redis.conf"

    def owns(self, pid: int, cmdline: bytes) -> bool:
        """redis-server's process title is ``redis-server 127.0.0.1:PORT``: the port names our server."""
        return b"redis" in cmdline and f":{self.state.get('port')}".encode() in cmdline

    def url(self, *, masked: bool = False) -> str | None:
        port, password = self.state.get("port"), self.state.get("password")
        if port is None or password is None:
            return None
        return f"redis://:{'***' if masked else password}@{LOOPBACK}:{port}/0"

    def notes(self) -> list[str]:
        if self.state.get("durable") is False:
            return ["non-durable: appendonly no, no RDB snapshots (a restart starts empty; for persistence "
                    "use your own REDIS_URL or a durable stack, Stack(..., durable=True))"]
        return []

    def _settings(self, port: int) -> dict[str, str]:
        settings = {
            "bind": LOOPBACK,
            "port": str(port),
            "protected-mode": "yes",
            "daemonize": "yes",
            "pidfile": str(self.pid_file),
            "logfile": str(self.log_file),
            "dir": str(self.data_dir),
            "maxclients": "4000",
            "save": '""',
            "appendonly": "no",
        }
        if self.ctx.durable:
            settings.update({"appendonly": "yes", "appendfsync": "always"})
        return settings

    @staticmethod
    def _binary() -> str:
        found = shutil.which("redis-server") or ("/usr/bin/redis-server" if os.access("/usr/bin/redis-server",
                                                                                      os.X_OK) else None)
        if found is None:
            raise StackError("redis-server not found; install it: apt-get install -y redis-server "
                             "(or run `make setup`)")
        return found

    def prepare(self, deadline: float) -> None:
        self._binary()
        self.ctx.makedir(self.dir)
        self.ctx.makedir(self.data_dir)
        if not self.state.get("password"):
            self.state.update(password=secrets.token_urlsafe(24), log=str(self.log_file))
            self.ctx.save()

    def choose_port(self, attempt: int) -> int:
        """The recorded port when it is (or comes) free on the first attempt: clients' URLs stay valid."""
        recorded = self.state.get("port")
        if attempt == 0 and recorded and port_comes_free(int(recorded)):
            return int(recorded)
        return self.pick_port()

    def configure(self, port: int) -> None:
        settings = self._settings(port)
        lines = ["# written by toolclash.stack on every start; edits are lost"]
        lines += [f"{key} {value}" if value else f'{key} ""' for key, value in settings.items()]
        lines.append(f"requirepass {self.state['password']}")
        self.ctx.write_file(self.conf_file, "\n".join(lines) + "\n")
        self.state.update(port=port, durable=self.ctx.durable,
                          settings={"appendonly": settings["appendonly"],
                                    "appendfsync": settings.get("appendfsync", "-"),
                                    "bind": LOOPBACK, "protected-mode": "yes"})

    def launch(self, deadline: float) -> Launched:
        self.pid_file.unlink(missing_ok=True)
        result = self.ctx.run([self._binary(), self.conf_file], timeout=deadline - time.monotonic(), cwd=self.dir)
        return Launched(result.returncode == 0, result.stderr + result.stdout, f"exit {result.returncode}")

    def probe(self) -> bool:
        """An authenticated PING."""
        import redis  # local import: nothing at import time

        client = redis.Redis(host=LOOPBACK, port=self.state["port"], password=self.state["password"],
                             socket_timeout=2, socket_connect_timeout=2)
        try:
            return bool(client.ping())
        except redis.AuthenticationError as exc:
            raise StackError(f"Redis on port {self.state['port']} rejected the recorded password; "
                             f"remove {self.ctx.root} to start afresh") from exc
        except redis.RedisError as exc:
            self.last_probe_error = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
            return False
        finally:
            client.close()
