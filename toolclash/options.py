"""``python -m toolclash.options [SCENARIO ...]``: every option a locustfile accepts, with defaults and help.

Locust answers ``--help`` before it imports the locustfile, so its help never shows the options a
locustfile adds; this lists toolclash's: the common ones by group and each scenario's own (all scenarios
when none is named). Every option is also a field of the web UI's start form and an environment variable
(the name shown).
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

from toolclash.option import Option
from toolclash.scenario import REGISTRY
from toolclash.settings import OPTIONS

GROUPS = (("run", "common options"), ("services", "services"), ("gates", "SLA gates"), ("ramp", "ramp shape"),
          ("faults", "faults, circuit breakers and the emergency stop (docs/faults.md)"),
          ("observability", "observability"))


def _rows(title: str, options: Sequence[Option]) -> list[str]:
    lines = [f"{title}:"]
    for opt in options:
        default = "''" if opt.default == "" else opt.default
        choices = f" {{{','.join(c for c in opt.choices if c)}}}" if opt.choices else ""
        lines.append(f"  {opt.flag}{choices}  (default {default}; env {opt.env})")
        lines.append(f"      {opt.help}")
    return lines


def main(argv: Sequence[str] | None = None) -> int:
    names = list(sys.argv[1:] if argv is None else argv)
    if any(n in ("-h", "--help") for n in names):
        print(__doc__.strip())
        return 0
    unknown = [n for n in names if n not in REGISTRY]
    if unknown:
        print(f"toolclash.options: unknown scenario(s) {', '.join(unknown)}; known: {', '.join(REGISTRY)}",
              file=sys.stderr)
        return 2
    lines: list[str] = []
    for group, title in GROUPS:
        if lines:
            lines.append("")
        lines += _rows(title, [o for o in OPTIONS if o.group == group and not o.locust_builtin])
    for name in names or list(REGISTRY):
        sc = REGISTRY[name]
        lines.append("")
        lines.append(f"scenario {name}: {sc.summary}")
        lines.append(f"  strategies {', '.join(sc.strategies)} (default {sc.default_strategy}); "
                     f"faults {', '.join(sc.faults) or 'none'}")
        lines += _rows(f"{name} options", sc.options)
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
