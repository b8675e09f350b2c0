"""The ramp: stages of agents (default 5 → 10 → 25 → 50 → 100), each with its own SLA gates.

The shape runs on the master (or the single process). It records when each stage began into
the runtime, which writes ``stages.json`` into the run directory; the verdict computes every
stage's figures from the operations invoked inside its window, so ``python -m checks``
reproduces the per-stage gates from files alone.
"""

from __future__ import annotations

import time

from locust import LoadTestShape

from toolclash.option import SettingsError
from toolclash.settings import Settings
from users.runtime import runtime


class RampShape(LoadTestShape):
    """``--stages`` agent counts, ``--stage-seconds`` each, ``--stage-spawn-rate`` agents/s between them."""

    use_common_options = False

    def __init__(self) -> None:
        super().__init__()
        self._last_stage: int | None = None

    def reset_time(self) -> None:
        """A new run of the shape (Locust calls this from ``start_shape``, before the first tick and before the run's
        ``test_start``): its stages are marked afresh, from the options as they are now — the web UI's form may
        have changed them since init, and the first tick must not ramp to the command line's stages."""
        super().reset_time()
        self._last_stage = None
        rt = runtime()
        rt.clear_stages()
        options = getattr(rt.environment, "parsed_options", None)
        if options is not None:
            try:
                rt.settings = Settings.from_mapping(vars(options), rt.scenarios)
            except SettingsError:
                pass  # the run's start says what is wrong (one line) and does not start

    def tick(self) -> tuple[int, float] | None:
        rt = runtime()
        settings = rt.require_settings()
        users = settings.stage_users()
        index = int(self.get_run_time() // settings.stage_seconds)
        if index >= len(users):
            rt.mark_stage(None, 0, time.time())
            return None
        if index != self._last_stage:
            self._last_stage = index
            rt.mark_stage(index, users[index], time.time())
        return users[index], settings.stage_spawn_rate
