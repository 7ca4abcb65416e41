"""The explorer's queries: search, a node's neighbourhood to draw, at-risk against plain
descendants, on one snapshot of a lake's lineage graph.

The graph is loaded once, before the page is served (4.5 s on the 100,000-node benchmark lake,
bench/lineage.py), and every click is then an in-memory walk. Drawing is capped: a
browser lays out a few hundred nodes in well under a second, not the 73,000 descendants an
early model of that lake has, so a neighbourhood stops at `limit` nodes, nearest first, and
says so. A newer lineage commit is picked up in a background thread; requests keep the old
snapshot until the new one is ready, so a busy lake never stalls a click on a reload.
"""

from __future__ import annotations

import heapq
import logging
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from germline.core import InputError
from germline.lineage import EdgeKind, LineageGraph, LineageStore, NodeKind
from germline.storage import Lake

log = logging.getLogger(__name__)

MAX_DEPTH = 6
MAX_LIMIT = 2000
RELOAD_CHECK_S = 5.0


@dataclass(frozen=True)
class Snapshot:
    """One loaded graph with the lookups search needs, and the table versions it came from."""

    graph: LineageGraph
    versions: tuple[int | None, int | None]
    ids: list[str]
    names: list[str]  # lower-cased, aligned with ids
    kinds: list[str]

    summary: dict[str, Any] = field(default_factory=dict)  # filled on first ask

    @classmethod
    def load(cls, store: LineageStore) -> Snapshot:
        """Both tables into the graph, and every model's base fingerprint walked once here
        (the graph memoises them): at-risk and the drawing's colours then only look them up,
        which on the benchmark lake halves a first at-risk click."""
        versions = _versions(store)
        graph = store.graph()
        ids, names, kinds = [], [], []
        model = NodeKind.MODEL.value
        for node_id, data in graph.g.nodes(data=True):
            ids.append(node_id)
            names.append(data["name"].lower())
            kinds.append(data["kind"])
            if data["kind"] == model:
                graph.fingerprint(node_id)
        return cls(graph, versions, ids, names, kinds)


def _versions(store: LineageStore) -> tuple[int | None, int | None]:
    def one(table: Any) -> int | None:
        dt = table.open()
        return None if dt is None else dt.version()

    return one(store.nodes_table), one(store.edges_table)


class Explorer:
    """Read-only questions about one lake, answered as plain JSON-ready dicts."""

    def __init__(self, lake: Lake) -> None:
        self.lake = lake
        self.store = LineageStore(lake)
        self._snapshot = Snapshot.load(self.store)
        self._checked = time.monotonic()
        self._reloading = threading.Lock()

    # -- the snapshot ------------------------------------------------------------------------
    @property
    def snapshot(self) -> Snapshot:
        """The current snapshot; at most every RELOAD_CHECK_S, a look at the tables' versions
        and, if they moved, a reload in the background."""
        now = time.monotonic()
        if now - self._checked > RELOAD_CHECK_S and self._reloading.acquire(blocking=False):
            self._checked = now
            threading.Thread(target=self._reload, daemon=True, name="lineage-reload").start()
        return self._snapshot

    def _reload(self) -> None:
        try:
            if _versions(self.store) != self._snapshot.versions:
                self._snapshot = Snapshot.load(self.store)
                log.info("lineage reloaded: %d nodes", len(self._snapshot.ids))
        except Exception:  # a failed reload keeps serving the last good snapshot
            log.exception("lineage reload failed")
        finally:
            self._reloading.release()

    @property
    def graph(self) -> LineageGraph:
        return self.snapshot.graph

    def resolve(self, ref: str) -> str:
        """A node id from an id, unique prefix or unique name (LineageGraph.resolve's errors)."""
        return self.graph.resolve(ref)

    # -- queries -------------------------------------------------------------------------------
    def summary(self) -> dict[str, Any]:
        """The lake's size by kind and its most recent teachers (models whose outputs became
        a dataset), worked out once per snapshot."""
        snap = self.snapshot
        if not snap.summary:
            snap.summary.update(self._summary(snap))
        return snap.summary

    def _summary(self, snap: Snapshot) -> dict[str, Any]:
        kinds = Counter(snap.kinds)
        g = snap.graph.g
        teachers = sorted(
            (
                (str(d["created_at"]), n)
                for n, d in g.nodes(data=True)
                if d["kind"] == NodeKind.MODEL.value
                and any(k == EdgeKind.GENERATED_BY.value for _, _, k in g.out_edges(n, "kind"))
            ),
            reverse=True,
        )[:12]
        return {
            "lake": self.lake.root,
            "nodes": len(snap.ids),
            "edges": g.number_of_edges(),
            "kinds": dict(sorted(kinds.items())),
            "teachers": [brief(snap.graph, n) for _, n in teachers],
        }

    def search(self, query: str, kind: str | None = None, limit: int = 50) -> dict[str, Any]:
        """Nodes whose name contains `query` (any case) or whose id starts with it: an exact
        name or id first, then id prefixes, then names by position of the match."""
        if kind is not None and kind not in {k.value for k in NodeKind}:
            raise InputError(f"unknown kind {kind!r}")
        limit = _bounded("limit", limit, 1, 500)
        snap, q = self.snapshot, query.strip().lower()
        ranked: list[tuple[int, int, str, str]] = []
        for node_id, name, node_kind in zip(snap.ids, snap.names, snap.kinds, strict=True):
            if kind is not None and node_kind != kind:
                continue
            if not q:
                ranked.append((3, 0, name, node_id))
                continue
            at = name.find(q)
            if name == q or node_id == query:
                ranked.append((0, 0, name, node_id))
            elif node_id.startswith(query):
                ranked.append((1, 0, name, node_id))
            elif at >= 0:
                ranked.append((2, at, name, node_id))
        first = heapq.nsmallest(limit, ranked)
        return {"total": len(ranked), "hits": [brief(snap.graph, n) for *_, n in first]}

    def neighbourhood(self, ref: str, depth: int = 2, limit: int = 300) -> dict[str, Any]:
        """The node with its ancestors and descendants up to `depth` hops, nearest first, at
        most `limit` nodes; each node's signed distance (negative: where it came from)."""
        graph = self.graph
        return self._neighbourhood(graph, graph.resolve(ref), depth, limit)

    @staticmethod
    def _neighbourhood(graph: LineageGraph, focus: str, depth: int, limit: int) -> dict[str, Any]:
        depth = _bounded("depth", depth, 1, MAX_DEPTH)
        limit = _bounded("limit", limit, 1, MAX_LIMIT)
        g = graph.g
        dist: dict[str, int] = {focus: 0}
        truncated = False
        frontiers = {-1: [focus], 1: [focus]}
        for hop in range(1, depth + 1):
            for sign, adjacency in ((-1, g.pred), (1, g.succ)):
                nxt = []
                for node in frontiers[sign]:
                    for other in adjacency[node]:
                        if other in dist:
                            continue
                        if len(dist) >= limit:
                            truncated = True
                            break
                        dist[other] = sign * hop
                        nxt.append(other)
                frontiers[sign] = nxt
        edges = [
            {"source": u, "target": v, "kind": k} for u, v, k in g.subgraph(dist).edges(data="kind")
        ]
        nodes = [{**brief(graph, n), "distance": d} for n, d in dist.items()]
        return {"focus": focus, "depth": depth, "nodes": nodes, "edges": edges,
                "truncated": truncated, "limit": limit}  # fmt: skip

    def at_risk(self, ref: str, depth: int = 3, limit: int = 300) -> dict[str, Any]:
        """The models at risk from a teacher (`lineage at-risk`: same base fingerprint, reached
        through data), with its descendants drawn to `depth` so the two can be told apart."""
        graph = self.graph
        teacher = graph.resolve(ref)
        depth, limit = (
            _bounded("depth", depth, 1, MAX_DEPTH),
            _bounded("limit", limit, 1, MAX_LIMIT),
        )
        hits = graph.at_risk(teacher)  # LineageError for a node that is not a model
        drawn = self._neighbourhood(graph, teacher, depth, limit)
        at_risk = {h.id for h in hits}
        for node in drawn["nodes"]:
            node["at_risk"] = node["id"] in at_risk
        shown = hits[:500]
        return {**drawn, "teacher": teacher, "fingerprint": graph.fingerprint(teacher),
                "at_risk_total": len(hits),
                "at_risk": [{**brief(graph, h.id), "depth": h.depth} for h in shown]}  # fmt: skip


def brief(graph: LineageGraph, node_id: str) -> dict[str, Any]:
    """What a list or a drawing shows of a node. Each answer reads one snapshot throughout:
    the caller passes the graph it took, so a reload mid-request cannot mix two."""
    data = graph.g.nodes[node_id]
    return {"id": node_id, "kind": data["kind"], "name": data["name"],
            "version": data["version"], "fingerprint": graph.fingerprint(node_id)}  # fmt: skip


def _bounded(name: str, value: int, low: int, high: int) -> int:
    if not low <= value <= high:
        raise InputError(f"{name} must be between {low} and {high}, not {value}")
    return value
