"""``python -m toolclash.options [SCENARIO ...]``: every option a locustfile accepts, with defaults and help.

Locust answers ``--help`` before it imports the locustfile, so its help never shows the options a
locustfile adds; this lists toolclash's: the common ones, the observability ones and each scenario's own
(all scenarios when none is named). Every option is also a field of the web UI's start form and an
environment variable (the name shown).
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

from toolclash.metrics import OPTIONS as METRICS_OPTIONS
from toolclash.run import SCENARIOS, scenario_module
from toolclash.settings import OPTIONS, Option


def _rows(title: str, options: Sequence[Option]) -> list[str]:
    lines = [f"{title}:"]
    for opt in options:
        default = "''" if opt.default == "" else opt.default
        choices = f" {{{','.join(opt.choices)}}}" if opt.choices else ""
        lines.append(f"  {opt.flag}{choices}  (default {default}; env {opt.env})")
        lines.append(f"      {opt.help}")
    return lines


def main(argv: Sequence[str] | None = None) -> int:
    names = list(sys.argv[1:] if argv is None else argv)
    if any(n in ("-h", "--help") for n in names):
        print(__doc__.strip())
        return 0
    unknown = [n for n in names if n not in SCENARIOS]
    if unknown:
        print(f"toolclash.options: unknown scenario(s) {', '.join(unknown)}; known: {', '.join(SCENARIOS)}",
              file=sys.stderr)
        return 2
    lines = _rows("common options", [o for o in OPTIONS if not o.locust_builtin])
    lines += _rows("observability", METRICS_OPTIONS)
    for name in names or list(SCENARIOS):
        module = scenario_module(name)
        lines.append("")
        lines.append(f"scenario {name}: strategies {', '.join(module.STRATEGIES)} (default {module.DEFAULT_STRATEGY});"
                     f" faults {', '.join(module.FAULTS) or 'none'}")
        lines += _rows(f"{name} options", module.OPTIONS)
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
