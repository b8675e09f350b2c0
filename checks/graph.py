"""A transaction dependency graph and the isolation anomalies it shows (Adya's phenomena, found the way Elle does).

Input: committed transactions, each a list of micro-operations ``(f, key, value)`` with ``f`` ``"r"`` (read
*value*) or ``"w"`` (wrote *value*); per key, the **version order**: the values the database installed, oldest
first, each with the op id of its writer (a scenario gets it from a write log or a ledger kept in the same
transaction as the write). Values need only be unique per key.

From these, three kinds of edge between transactions (T → U):

* ``ww`` (write dependency): U installed the version of a key right after T's;
* ``wr`` (read dependency): U read a version T installed;
* ``rw`` (anti-dependency): T read a version and U installed the next one.

Cycles are found per strongly connected component (scipy's linear-time algorithm); in each, a short cycle of each
kind is looked for by breadth-first search from a few of its edges, and classified:

* **G0** write cycle (``ww`` only); **G1c** cyclic information flow (``ww``/``wr``, at least one ``wr``);
* **G-single** exactly one ``rw`` (read skew); **G2-item** two or more ``rw`` (write skew).

Besides cycles: **G1a** aborted read (a committed transaction read a value written by one that failed), **G1b**
intermediate read (it read a value its writer overwrote before committing), **lost-update** (P4: two committed
transactions read the same version of a key and both wrote that key), **internal** (a transaction did not read
its own earlier write) and **garbage-read** (a value no transaction wrote).

Every step is linear in the number of micro-operations, except the cycle searches, which run only inside
components that have a cycle (and a bounded number of times per component).
"""

from __future__ import annotations

from collections import defaultdict, deque
from collections.abc import Callable, Hashable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from itertools import pairwise
from typing import Any

from checks import CheckResult, Evidence, result

WW, WR, RW = 1, 2, 4
KIND_NAMES = {WW: "ww", WR: "wr", RW: "rw"}
CYCLES = ("G0", "G1c", "G-single", "G2-item")
OTHERS = ("G1a", "G1b", "lost-update", "internal", "garbage-read")
ANOMALIES = ("G0", "G1a", "G1b", "G1c", "lost-update", "G-single", "G2-item", "internal", "garbage-read")
"""Every anomaly this module names, in the order reports list them."""

EXAMPLES_PER_ANOMALY = 5
TRIES_SMALL, TRIES_LARGE, LARGE_COMPONENT = 16, 3, 2000
"""Start edges tried per cycle kind: more in small components (where the shortest cycle matters), fewer in huge
ones (a weak level under heavy load can make most of a history one component)."""

Mop = Sequence[Any]
Txn = tuple[str, Sequence[Mop]]


@dataclass
class Analysis:
    """What the graph showed: a count per anomaly, a few examples each, and the graph's size."""

    counts: dict[str, int] = field(default_factory=lambda: dict.fromkeys(ANOMALIES, 0))
    examples: dict[str, list[dict[str, Any]]] = field(default_factory=lambda: defaultdict(list))
    transactions: int = 0
    edges: int = 0
    cyclic_components: int = 0
    largest_component: int = 0

    def add(self, anomaly: str, example: dict[str, Any]) -> None:
        self.counts[anomaly] += 1
        found = self.examples[anomaly]
        if len(found) < EXAMPLES_PER_ANOMALY:
            found.append({"anomaly": anomaly, **example})

    def found(self) -> dict[str, int]:
        return {name: n for name, n in self.counts.items() if n}

    def graph_figures(self) -> dict[str, int]:
        return {"transactions": self.transactions, "edges": self.edges, "cyclic_components": self.cyclic_components,
                "largest_component": self.largest_component}


class _Versions:
    """Per key: installed values in order, their writers (node index, -1 if not a committed transaction), each
    value's position, the writer of the version after each one; values a transaction overwrote itself before
    committing (intermediate)."""

    def __init__(self, versions: Mapping[Any, Sequence[tuple[Any, str]]], node: Mapping[str, int],
                 initial: Any) -> None:
        self.initial = initial
        self.info: dict[Hashable, tuple[dict[Any, int], list[int], list[int]]] = {}
        """key -> (position of each value, writer of each version, writer of the next version)."""
        self.value: dict[Hashable, list[Any]] = {}
        self.op: dict[Hashable, list[str | None]] = {}
        self.intermediate: dict[Hashable, dict[Any, str]] = {}
        get = node.get
        for key, rows in versions.items():
            if not rows:
                continue
            all_values, ops = zip(*rows, strict=True)
            kept_values: Sequence[Any] = all_values
            kept_ops: Sequence[str] = ops
            if len(set(ops)) != len(ops):  # a transaction wrote the key more than once: its last write counts
                last = [i for i in range(len(ops) - 1) if ops[i] != ops[i + 1]]
                last.append(len(ops) - 1)
                kept_ops = tuple(ops[i] for i in last)
                if len(set(kept_ops)) == len(kept_ops):  # its writes were consecutive (under its row lock)
                    kept_values = tuple(all_values[i] for i in last)
                    kept = set(last)
                    self.intermediate[key] = {all_values[i]: ops[i] for i in range(len(ops)) if i not in kept}
                else:
                    kept_values, kept_ops = self._installed(key, rows)
            values = [initial, *kept_values]
            wid = [-1, *[get(o, -1) for o in kept_ops]]
            n = len(values)
            pos = dict(zip(reversed(values), range(n - 1, -1, -1), strict=True))  # first position of a value
            self.info[key] = (pos, wid, [*wid[1:], -1])
            self.value[key] = values
            self.op[key] = [None, *kept_ops]

    def _installed(self, key: Hashable, rows: Sequence[tuple[Any, str]]) -> tuple[Sequence[Any], Sequence[str]]:
        """A writer's last write of the key is the version it installed; its earlier ones are intermediate."""
        final: set[str] = set()
        kept: list[tuple[Any, str]] = []
        for value, op_id in reversed(rows):
            if op_id in final:
                self.intermediate.setdefault(key, {})[value] = op_id
            else:
                final.add(op_id)
                kept.append((value, op_id))
        kept.reverse()
        return [v for v, _ in kept], [o for _, o in kept]

    def empty(self, key: Hashable) -> tuple[dict[Any, int], list[int], list[int]]:
        """A key nobody wrote: only its initial value exists."""
        self.info[key] = ({self.initial: 0}, [-1], [-1])
        self.value[key] = [self.initial]
        self.op[key] = [None]
        return self.info[key]


def analyse(committed: Sequence[Txn], versions: Mapping[Any, Sequence[tuple[Any, str]]], *,
            initial: Any = None, aborted: Iterable[Txn] = (), describe: Callable[[str], Mapping[str, Any]] | None = None
            ) -> Analysis:
    """The anomalies of a history: *committed* transactions ``(op_id, micro-ops)``, the *versions* installed per
    key ``[(value, writer op id), …]`` oldest first (without the *initial* value every key starts with), and the
    transactions known to have *aborted* (their writes explain aborted reads). *describe(op_id)* adds facts
    (agent, strategy …) to each transaction named in an example."""
    out = Analysis(transactions=len(committed))
    node = {op_id: i for i, (op_id, _) in enumerate(committed)}
    ver = _Versions(versions, node, initial)
    aborted_writes: dict[Hashable, dict[Any, str]] = defaultdict(dict)
    aborted_ids: set[str] = set()
    for op_id, mops in aborted:
        aborted_ids.add(op_id)
        for f, k, v in mops:
            if f == "w":
                aborted_writes[k][v] = op_id
    src: list[int] = []
    dst: list[int] = []
    add_src, add_dst = src.append, dst.append
    readers: dict[tuple[Hashable, int], list[int]] = defaultdict(list)  # (key, version read) -> read, then wrote
    info = ver.info
    for t, (op_id, mops) in enumerate(committed):
        own: dict[Hashable, Any] | None = None
        read: dict[Hashable, int] | None = None  # key -> the version it last read of it (before writing it)
        for f, k, v in mops:
            if f == "w":
                if own is None:
                    own = {k: v}
                else:
                    if k not in own and read is not None and k in read:
                        readers[(k, read[k])].append(t)
                    own[k] = v
                    continue
                if read is not None and k in read:
                    readers[(k, read[k])].append(t)
                continue
            if own is not None and k in own:
                if own[k] != v:
                    out.add("internal", {"op": op_id, "key": k, "read": v, "own_write": own[k],
                                         "what": "read a different value than its own earlier write"})
                continue
            ki = info.get(k) or ver.empty(k)
            p = ki[0].get(v)
            if p is None:
                _unseen_read(out, ver, aborted_writes, op_id, k, v, describe)
                continue
            w = ki[1][p]
            if w >= 0:
                if w != t:
                    add_src(w)
                    add_dst(t)
            elif p and ver.op[k][p] in aborted_ids:
                _aborted_read(out, op_id, k, v, str(ver.op[k][p]), describe)
            w = ki[2][p]
            if w >= 0 and w != t:
                add_src(t)
                add_dst(w)
            if read is None:
                read = {k: p}
            else:
                read[k] = p
    for _, wk, _ in info.values():
        for a, b in pairwise(wk):
            if a >= 0 and b >= 0 and a != b:
                add_src(a)
                add_dst(b)
    out.edges = len(src)
    for (k, p), ts in readers.items():
        if len(ts) > 1:
            out.add("lost-update", {"key": k, "read": ver.value[k][p], "ops": [_who(committed[t][0], describe)
                                                                               for t in ts],
                                    "what": f"{len(ts)} transactions read the same version of the key and each "
                                            "wrote the key: all but one of the writes is lost"})
    if src:
        _cycles(out, committed, ver, src, dst, describe)
    return out


def _who(op_id: str, describe: Callable[[str], Mapping[str, Any]] | None) -> dict[str, Any]:
    return {"op_id": op_id, **(describe(op_id) if describe else {})}


def _aborted_read(out: Analysis, op_id: str, k: Hashable, v: Any, writer: str,
                  describe: Callable[[str], Mapping[str, Any]] | None) -> None:
    out.add("G1a", {"op": _who(op_id, describe), "key": k, "read": v, "writer": _who(writer, describe),
                    "what": "read a value written by a transaction that failed"})


def _unseen_read(out: Analysis, ver: _Versions, aborted_writes: Mapping[Hashable, Mapping[Any, str]], op_id: str,
                 k: Hashable, v: Any, describe: Callable[[str], Mapping[str, Any]] | None) -> None:
    """A read of a value that is not an installed version: intermediate, aborted, or nobody's."""
    writer = ver.intermediate.get(k, {}).get(v)
    if writer is not None:
        if writer != op_id:
            out.add("G1b", {"op": _who(op_id, describe), "key": k, "read": v, "writer": _who(writer, describe),
                            "what": "read a value its writer overwrote before committing (an intermediate version)"})
        return
    writer = aborted_writes.get(k, {}).get(v)
    if writer is not None:
        _aborted_read(out, op_id, k, v, writer, describe)
        return
    out.add("garbage-read", {"op": _who(op_id, describe), "key": k, "read": v,
                             "what": "read a value no transaction wrote"})


# ------------------------------------------------------------------------------------------------- cycles


def _components(n: int, src: list[int], dst: list[int]) -> Any:
    """Strongly connected component label of every node (linear time, in C)."""
    import numpy as np
    from scipy.sparse import csr_matrix
    from scipy.sparse.csgraph import connected_components

    s = np.asarray(src, dtype=np.int32)
    d = np.asarray(dst, dtype=np.int32)
    graph = csr_matrix((np.ones(len(s), dtype=np.int8), (s, d)), shape=(n, n))
    _, labels = connected_components(graph, directed=True, connection="strong")
    return labels


def _cycles(out: Analysis, committed: Sequence[Txn], ver: _Versions, src: list[int], dst: list[int],
            describe: Callable[[str], Mapping[str, Any]] | None) -> None:
    import numpy as np

    labels = _components(len(committed), src, dst)
    sizes = np.bincount(labels)
    cyclic = np.flatnonzero(sizes > 1)
    if not len(cyclic):
        return
    out.cyclic_components = len(cyclic)
    out.largest_component = int(sizes.max())
    members = np.flatnonzero(np.isin(labels, cyclic))
    adj, why = _explained_edges(committed, ver, members.tolist(), labels)
    by_label: dict[int, list[int]] = defaultdict(list)
    for t in members.tolist():
        by_label[int(labels[t])].append(t)
    for nodes in by_label.values():
        tries = TRIES_SMALL if len(nodes) <= LARGE_COMPONENT else TRIES_LARGE
        for name, start_kind, allowed, need_rw in (("G0", WW, WW, False), ("G1c", WR, WW | WR, False),
                                                   ("G-single", RW, WW | WR, False),
                                                   ("G2-item", RW, WW | WR | RW, True)):
            cycle = _shortest_cycle(adj, nodes, start_kind, allowed, need_rw, tries)
            if cycle is not None:
                out.add(name, {"cycle": [_step(committed, why, u, kind, v, describe) for u, kind, v in cycle],
                               "component_size": len(nodes)})


def _explained_edges(committed: Sequence[Txn], ver: _Versions, members: list[int], labels: Any
                     ) -> tuple[dict[int, dict[int, int]], dict[tuple[int, int, int], dict[str, Any]]]:
    """The edges inside cyclic components, with the key and versions behind each (derived again from the
    transactions' own micro-operations: ww into a writer, wr into a reader, rw out of a reader)."""
    adj: dict[int, dict[int, int]] = defaultdict(dict)
    why: dict[tuple[int, int, int], dict[str, Any]] = {}

    def edge(u: int, v: int, kind: int, because: dict[str, Any]) -> None:
        if u == v or u < 0 or v < 0 or labels[u] != labels[v]:
            return
        adj[u][v] = adj[u].get(v, 0) | kind
        why.setdefault((u, v, kind), because)

    for t in members:
        own: dict[Hashable, Any] = {}
        for f, k, v in committed[t][1]:
            if f == "w":
                own[k] = v
                continue
            if k in own:
                continue
            ki = ver.info.get(k)
            p = ki[0].get(v) if ki else None
            if ki is None or p is None:
                continue
            vals = ver.value[k]
            edge(ki[1][p], t, WR, {"key": k, "value": v})
            if p + 1 < len(vals):
                edge(t, ki[2][p], RW, {"key": k, "read": v, "next": vals[p + 1]})
        for k, v in own.items():
            ki = ver.info.get(k)
            p = ki[0].get(v) if ki else None
            if ki is not None and p:
                edge(ki[1][p - 1], t, WW, {"key": k, "value": ver.value[k][p - 1], "next": v})
    return adj, why


def _shortest_cycle(adj: Mapping[int, Mapping[int, int]], nodes: list[int], start_kind: int, allowed: int,
                    need_rw: bool, tries: int) -> list[tuple[int, int, int]] | None:
    """The shortest cycle found that starts with an edge of *start_kind* and returns over edges of *allowed* kinds
    (with *need_rw*: through at least one more ``rw`` edge), trying up to *tries* start edges."""
    best: list[tuple[int, int, int]] | None = None
    tried = 0
    for a in nodes:
        for b, kinds in adj.get(a, {}).items():
            if not kinds & start_kind:
                continue
            path = _path(adj, b, a, allowed, need_rw, best)
            if path is not None and (best is None or len(path) + 1 < len(best)):
                best = [(a, start_kind, b), *path]
            tried += 1
            if tried >= tries or (best is not None and len(best) == 2):
                return best
    return best


def _path(adj: Mapping[int, Mapping[int, int]], start: int, goal: int, allowed: int, need_rw: bool,
          best: list[Any] | None) -> list[tuple[int, int, int]] | None:
    """Breadth-first: the shortest path *start* → *goal* over *allowed* edge kinds (with *need_rw*: through at
    least one ``rw`` edge), as ``(from, kind, to)`` steps; None if there is none shorter than *best*, or if the one
    found is not simple (searching (transaction, rw seen) states can pass one transaction twice; such a walk is
    never reported, so a search may miss a cycle but never names a false one)."""
    state0 = (start, 0)
    parent: dict[tuple[int, int], tuple[tuple[int, int], int] | None] = {state0: None}
    frontier = deque([(state0, 0)])
    limit = len(best) - 1 if best is not None else None
    want = 1 if need_rw else 0
    while frontier:
        (u, r), depth = frontier.popleft()
        if u == goal and r == want and depth:
            break
        if limit is not None and depth >= limit - 1:
            continue
        if u == goal and depth:
            continue  # the goal is only ever the last step (the cycle stays simple)
        for v, kinds in adj.get(u, {}).items():
            if v == start:
                continue
            for kind in (WW, WR, RW):
                if not kinds & kind & allowed:
                    continue
                nxt = (v, r | (1 if kind == RW else 0))
                if nxt not in parent:
                    parent[nxt] = ((u, r), kind)
                    frontier.append((nxt, depth + 1))
    else:
        return None
    steps: list[tuple[int, int, int]] = []
    state = (goal, want)
    while (link := parent[state]) is not None:
        prev, kind = link
        steps.append((prev[0], kind, state[0]))
        state = prev
    steps.reverse()
    if len({u for u, _, _ in steps}) < len(steps):
        return None  # went through one transaction twice (once before and once after an rw edge): not simple
    return steps


def _step(committed: Sequence[Txn], why: Mapping[tuple[int, int, int], Mapping[str, Any]], u: int, kind: int, v: int,
          describe: Callable[[str], Mapping[str, Any]] | None) -> dict[str, Any]:
    """One step of a cycle, Elle-style: the transaction, the edge to the next one, and why that edge exists."""
    b = why.get((u, v, kind), {})
    nxt = committed[v][0]
    if kind == WW:
        because = f"it wrote {b.get('key')}={b.get('value')!r}; {nxt} wrote the next version {b.get('next')!r}"
    elif kind == WR:
        because = f"{nxt} read its write {b.get('key')}={b.get('value')!r}"
    else:
        because = f"it read {b.get('key')}={b.get('read')!r}; {nxt} wrote the next version {b.get('next')!r}"
    return {**_who(committed[u][0], describe), "edge": KIND_NAMES[kind], "to": nxt, "because": because}


# -------------------------------------------------------------------------------------------- isolation levels

MODELS = ("read-committed", "snapshot-isolation", "repeatable-read", "serializable")
PROHIBITED: dict[str, frozenset[str]] = {
    "read-committed": frozenset({"G0", "G1a", "G1b", "G1c", "internal", "garbage-read"}),
    "snapshot-isolation": frozenset({"G0", "G1a", "G1b", "G1c", "internal", "garbage-read", "lost-update",
                                     "G-single"}),
    "repeatable-read": frozenset(ANOMALIES),
    "serializable": frozenset(ANOMALIES),
}
"""What each consistency model forbids (Adya's PL-2, snapshot isolation, PL-2.99 and PL-3 over single keys)."""

PROVIDED = {"read_committed": "read-committed", "repeatable_read": "snapshot-isolation",
            "serializable": "serializable"}
"""What PostgreSQL documents each of its levels to provide (its REPEATABLE READ is snapshot isolation)."""


def expected_model(level: str, expect: str) -> str:
    """The model a run is judged against: ``--expect-isolation`` if given, else what its level provides."""
    return expect or PROVIDED.get(level, "serializable")


def prohibited_found(analysis: Analysis, model: str) -> dict[str, int]:
    """The anomalies found that *model* forbids, with their counts."""
    banned = PROHIBITED[model]
    return {name: n for name, n in analysis.counts.items() if n and name in banned}


def anomaly_summary(found: Mapping[str, int]) -> str:
    return ", ".join(f"{n} {name}" for name, n in found.items()) or "none"


def isolation_check(name: str, analysis: Analysis, level: str, expect: str, **extra: Any) -> CheckResult:
    """The verdict of *analysis* for a run at PostgreSQL *level* that claims *expect* (empty: what the level
    provides): an anomaly the model forbids makes it false; those it allows are counted, not failed."""
    model = expected_model(level, expect)
    banned = prohibited_found(analysis, model)
    allowed = {n: c for n, c in analysis.found().items() if n not in banned}
    ev = Evidence()
    for anomaly in (*banned, *allowed):
        for example in analysis.examples.get(anomaly, []):
            ev.add(example)
    counts = {"level": level, "expected": model, "prohibited": banned, "allowed": allowed,
              "anomalies": analysis.counts, **analysis.graph_figures(), **extra}
    where = f"(level {level.replace('_', ' ')}, judged as {model})"
    if banned:
        return result(name, False, counts, ev, f"{anomaly_summary(banned)} {where}: forbidden")
    return result(name, True, counts, ev, f"no anomaly {model} forbids {where}; allowed and seen: "
                                          f"{anomaly_summary(allowed)}")
