"""Packet loss and partitions between hosts: iptables rules inside the network namespaces of the hosts.

Only namespaces the user named (``--nemesis-hosts worker1=NETNS,…``, e.g. those the multi-host harness makes)
are ever touched, never the machine's own. A rule drops packets between the namespace and the other end's
address, in both directions (``INPUT -s`` and ``OUTPUT -d``), all of them (partition) or a random share
(loss, iptables' ``statistic`` match). Every rule carries the comment ``toolclash:<fault id>``, so healing
removes exactly its own rules and :func:`cleanup` finds any that a crash left behind.
"""

from __future__ import annotations

import contextlib
import ipaddress
import os
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

NETNS_DIR = Path("/run/netns")
COMMENT = "toolclash:"
TIMEOUT_S = 10.0


class NetfilterError(RuntimeError):
    """An iptables step failed (one line)."""


@dataclass(frozen=True)
class Host:
    """A host of the run: its network namespace and its address there."""

    name: str
    netns: str
    address: str


def _run(netns: str, *args: str, check: bool = True) -> str:
    proc = subprocess.run(["ip", "netns", "exec", netns, *args], capture_output=True, text=True, timeout=TIMEOUT_S,
                          check=False)
    if check and proc.returncode != 0:
        why = (proc.stderr.strip().splitlines() or [f"exit code {proc.returncode}"])[-1]
        raise NetfilterError(f"{' '.join(args[:3])} in namespace {netns}: {why}")
    return proc.stdout


def requirements() -> str | None:
    """Why loss and partition faults cannot run here (None: they can)."""
    if os.geteuid() != 0:
        return "loss and partition faults change iptables rules in network namespaces: run as root"
    for tool in ("ip", "iptables"):
        if shutil.which(tool) is None:
            return f"loss and partition faults need {tool} ({'iproute2' if tool == 'ip' else 'iptables'}): " \
                   f"apt-get install {'iproute2' if tool == 'ip' else 'iptables'}"
    return None


def netns_address(netns: str) -> str:
    """The first global IPv4 address inside *netns*."""
    for line in _run(netns, "ip", "-4", "-o", "addr", "show", "scope", "global").splitlines():
        parts = line.split()
        if "inet" in parts:
            return parts[parts.index("inet") + 1].split("/")[0]
    raise NetfilterError(f"network namespace {netns} has no IPv4 address")


def parse_hosts(text: str) -> dict[str, Host]:
    """``--nemesis-hosts`` (``name=NETNS,…``) as hosts, their addresses read from the namespaces."""
    hosts: dict[str, Host] = {}
    for part in (p.strip() for p in text.split(",")):
        if not part:
            continue
        name, sep, netns = part.partition("=")
        if not sep or not name.strip() or not netns.strip():
            raise NetfilterError(f"--nemesis-hosts: {part!r} is not name=NETNS (e.g. worker1=ns-w1)")
        name, netns = name.strip(), netns.strip()
        if not (NETNS_DIR / netns).exists():
            raise NetfilterError(f"--nemesis-hosts: network namespace {netns!r} of {name} does not exist "
                                 "(ip netns list shows those that do)")
        hosts[name] = Host(name, netns, netns_address(netns))
    return hosts


def address_of(host: str) -> str:
    """*host* as an IPv4 address (a name is resolved once)."""
    import socket

    try:
        return str(ipaddress.IPv4Address(host))
    except ValueError:
        return socket.gethostbyname(host)


def _rules(fault_id: str, peer: str, share: float | None) -> list[list[str]]:
    match = ["-m", "statistic", "--mode", "random", "--probability", f"{share:.6f}"] if share is not None else []
    comment = ["-m", "comment", "--comment", COMMENT + fault_id]
    return [["INPUT", "-s", peer, *match, *comment, "-j", "DROP"],
            ["OUTPUT", "-d", peer, *match, *comment, "-j", "DROP"]]


def drop(netns: str, fault_id: str, peer: str, share: float | None) -> None:
    """Drop packets between *netns* and *peer* (all, or a random *share* of them), both directions; the rules
    are read back (what iptables lists is in effect). :class:`NetfilterError` if not."""
    for rule in _rules(fault_id, peer, share):
        _run(netns, "iptables", "-w", "-I", *rule)
    found = listed(netns, fault_id)
    if found < 2:
        raise NetfilterError(f"namespace {netns}: {found} of the 2 rules of {fault_id} are listed after adding them")


def _ours(netns: str, fault_id: str | None = None) -> list[list[str]]:
    """The toolclash rules listed in *netns* (those of *fault_id*, or all), as ``iptables -S`` arguments."""
    out = []
    for line in _run(netns, "iptables", "-w", "-S").splitlines():
        args = _split(line)
        if args[:1] != ["-A"] or "--comment" not in args:
            continue
        comment = args[args.index("--comment") + 1]
        if comment == COMMENT + fault_id if fault_id is not None else comment.startswith(COMMENT):
            out.append(args)
    return out


def listed(netns: str, fault_id: str) -> int:
    """Rules of *fault_id* that iptables lists in *netns*."""
    return len(_ours(netns, fault_id))


def dropped(netns: str, fault_id: str) -> int:
    """Packets the rules of *fault_id* dropped so far in *netns* (their counters)."""
    total = 0
    for chain in ("INPUT", "OUTPUT"):
        for line in _run(netns, "iptables", "-w", "-L", chain, "-v", "-x", "-n").splitlines():
            if f"/* {COMMENT}{fault_id} */" in line and line.split()[:1] and line.split()[0].isdigit():
                total += int(line.split()[0])
    return total


def heal(netns: str, fault_id: str) -> None:
    """Remove the rules of *fault_id* from *netns*; checked by listing (:class:`NetfilterError` if any is left)."""
    for args in _ours(netns, fault_id):
        _run(netns, "iptables", "-w", "-D", *args[1:], check=False)
    left = listed(netns, fault_id)
    if left:
        raise NetfilterError(f"namespace {netns}: {left} rule(s) of {fault_id} are still listed after removing them")


def cleanup(netns: str) -> int:
    """Remove every toolclash rule from *netns* (whatever fault made it); the number removed."""
    if not (NETNS_DIR / netns).exists():
        return 0
    n = 0
    with contextlib.suppress(NetfilterError, OSError, subprocess.SubprocessError):
        for args in _ours(netns):
            _run(netns, "iptables", "-w", "-D", *args[1:], check=False)
            n += 1
    return n


def _split(line: str) -> list[str]:
    import shlex

    return shlex.split(line)
