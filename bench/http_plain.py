"""The reference of the HTTP phase (``bench/http.py``): a plain Locust ``FastHttpUser`` without toolclash, sending
the same deduction to the example platform as ``--target examples/platform/http.toml`` does.

    locust -f bench/http_plain.py --headless -u 50 -r 50 -t 20s --host http://127.0.0.1:<port> --accounts 1000
"""

from __future__ import annotations

import random
import uuid
from typing import Any

from locust import FastHttpUser, constant, events, task


@events.init_command_line_parser.add_listener
def _options(parser: Any, **_: Any) -> None:
    parser.add_argument("--accounts", type=int, default=1000, help="accounts to deduct from (1..N)")


class PlainAgent(FastHttpUser):
    wait_time = constant(0)
    max_retries = 0

    @task
    def deduct(self) -> None:
        account = random.randint(1, int(self.environment.parsed_options.accounts))
        self.client.post(f"/accounts/{account}/deduct", json={"amount": random.randint(1, 10), "agent": "plain"},
                         headers={"Idempotency-Key": uuid.uuid4().hex}, name="/accounts/{account}/deduct")
