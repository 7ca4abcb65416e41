"""The in-memory query view of the lineage graph (networkx), and the queries users ask.

Edges here point the way data and weights flow, parent -> child (teacher -> dataset ->
student), the reverse of how they are stored. So "ancestors" are where a node came from and
"descendants" are what may have inherited from it, exactly as networkx names them.
"""

from __future__ import annotations

import functools
import gc
import itertools
import json
import logging
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, ParamSpec, TypeVar

import networkx as nx
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from germline.lineage.errors import AmbiguousNode, LineageError, UnknownNode
from germline.lineage.schema import EdgeKind, Node, NodeKind

log = logging.getLogger(__name__)
_KINDS = {k.value: k for k in NodeKind}
_P = ParamSpec("_P")
_T = TypeVar("_T")


@contextmanager
def _gc_paused() -> Iterator[None]:
    """Loading and querying allocate up to millions of containers, none of them cyclic garbage;
    with the collector on, full collections keep rescanning the whole graph (~3M objects)."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


def _no_gc(fn: Callable[_P, _T]) -> Callable[_P, _T]:
    @functools.wraps(fn)
    def wrapper(*args: _P.args, **kwargs: _P.kwargs) -> _T:
        with _gc_paused():
            return fn(*args, **kwargs)

    return wrapper


@dataclass(frozen=True)
class Hit:
    """A node found by a query, with how many edges away from the query node it lies.

    Queries can return tens of thousands of hits, so the full `node` record and the base
    `fingerprint` are built only when asked for.
    """

    id: str
    depth: int
    graph: LineageGraph = field(repr=False, compare=False)

    @property
    def node(self) -> Node:
        return self.graph.node(self.id)

    @property
    def fingerprint(self) -> str | None:
        return self.graph.fingerprint(self.id)

    def to_dict(self) -> dict[str, Any]:
        return {**self.node.to_dict(), "depth": self.depth, "fingerprint": self.fingerprint}


@dataclass(frozen=True)
class Step:
    """One hop of a path: from `src` to `dst` along an edge of `kind`, `forward` when the hop
    follows the flow of data (parent to child)."""

    src: str
    dst: str
    kind: str
    forward: bool

    def to_dict(self) -> dict[str, Any]:
        return {"src": self.src, "dst": self.dst, "kind": self.kind, "forward": self.forward}


class LineageGraph:
    """A read-only snapshot of the lineage tables as a networkx DiGraph (flow orientation)."""

    def __init__(self, graph: nx.DiGraph) -> None:
        self.g = graph
        self._fingerprints: dict[str, str | None] = {}
        self._kind_of: dict[str, str] | None = None
        self._dataset_ids: frozenset[str] | None = None
        self._nodes: dict[str, Node] = {}

    # -- construction ---------------------------------------------------------------------
    @classmethod
    @_no_gc
    def from_arrow(cls, nodes: pa.Table, edges: pa.Table) -> LineageGraph:
        g = nx.DiGraph()
        cols = {name: nodes.column(name).to_pylist() for name in nodes.column_names}
        g.add_nodes_from(
            (
                node_id,
                {
                    "kind": kind,
                    "name": name,
                    "uri": uri,
                    "version": version,
                    "weights_hash": wh,
                    "attrs": attrs,
                    "created_at": created,
                },
            )
            for node_id, kind, name, uri, version, wh, attrs, created in zip(
                cols["id"],
                cols["kind"],
                cols["name"],
                cols["uri"],
                cols["version"],
                cols["weights_hash"],
                cols["attrs"],
                cols["created_at"],
                strict=True,
            )
        )
        graph = cls(g)
        graph._kind_of = dict(zip(cols["id"], cols["kind"], strict=True))
        _add_edges_fast(
            g,
            _interned(edges.column("dst")),
            _interned(edges.column("src")),
            _interned(edges.column("kind")),
        )
        return graph

    # -- lookups ---------------------------------------------------------------------------
    def __contains__(self, node_id: str) -> bool:
        return node_id in self.g

    def __len__(self) -> int:
        return self.g.number_of_nodes()

    def node(self, node_id: str) -> Node:
        cached = self._nodes.get(node_id)
        if cached is not None:
            return cached
        try:
            data = self.g._node[node_id]
        except KeyError:
            raise UnknownNode(f"unknown node id {node_id!r}") from None
        node = self._nodes[node_id] = Node(
            id=node_id,
            kind=_KINDS[data["kind"]],
            name=data["name"],
            uri=data["uri"],
            version=data["version"],
            weights_hash=data["weights_hash"],
            attrs=json.loads(data["attrs"]) if data["attrs"] else {},
            created_at=data["created_at"],
        )
        return node

    def nodes(self, kind: NodeKind | None = None) -> list[Node]:
        ids = (n for n, k in self.g.nodes(data="kind") if kind is None or k == kind.value)
        return sorted((self.node(n) for n in ids), key=lambda n: (n.kind, n.name, n.created_at))

    def resolve(self, ref: str) -> str:
        """A node id from a full id, a unique id prefix, or a unique name."""
        if ref in self.g:
            return ref
        by_prefix = [n for n in self.g if n.startswith(ref)] if ":" in ref else []
        by_name = [n for n, name in self.g.nodes(data="name") if name == ref]
        matches = by_prefix or by_name
        if len(matches) == 1:
            return matches[0]
        if not matches:
            raise UnknownNode(f"unknown node {ref!r}: no id or name matches")
        shown = ", ".join(sorted(matches)[:5]) + (" ..." if len(matches) > 5 else "")
        raise AmbiguousNode(f"ambiguous node {ref!r}: {len(matches)} match ({shown}); give the id")

    def _kinds(self) -> dict[str, str]:
        """Node id -> kind as a plain dict, built once: the hot loops look kinds up per edge."""
        if self._kind_of is None:
            self._kind_of = dict(self.g.nodes(data="kind"))
        return self._kind_of

    def _datasets(self) -> frozenset[str]:
        """The dataset ids, built once (at-risk splits each level's children by them)."""
        if self._dataset_ids is None:
            dataset = NodeKind.DATASET.value
            self._dataset_ids = frozenset(n for n, k in self._kinds().items() if k == dataset)
        return self._dataset_ids

    def parents(self, node_id: str) -> list[tuple[str, str]]:
        """(parent id, edge kind) for each edge the node has to where it came from."""
        self._need(node_id)
        return sorted((p, d["kind"]) for p, d in self.g.pred[node_id].items())

    def children(self, node_id: str) -> list[tuple[str, str]]:
        self._need(node_id)
        return sorted((c, d["kind"]) for c, d in self.g.succ[node_id].items())

    def fingerprint(self, node_id: str) -> str | None:
        """The base fingerprint of a model: the weights hash at the root of its derived_from
        chain. None for nodes that are not models."""
        if node_id in self._fingerprints:
            return self._fingerprints[node_id]
        if self._kinds().get(node_id) != NodeKind.MODEL.value:
            return None
        chain = []
        current: str | None = node_id
        result: str | None = None
        while current is not None and current not in chain:
            if current in self._fingerprints:
                result = self._fingerprints[current]
                break
            data = self.g.nodes[current]
            if data["kind"] != NodeKind.MODEL.value:
                break
            chain.append(current)
            parent = next(
                (
                    p
                    for p, d in self.g.pred[current].items()
                    if d["kind"] == EdgeKind.DERIVED_FROM.value
                ),
                None,
            )
            if parent is None:
                result = data["weights_hash"]
            current = parent
        for n in chain:
            self._fingerprints[n] = result
        return self._fingerprints.get(node_id, result)

    # -- queries ---------------------------------------------------------------------------
    @_no_gc
    def ancestors(self, node_id: str) -> list[Hit]:
        """Everything the node came from: parents, their parents, and so on."""
        self._need(node_id)
        return self._hits(_bfs(self.g._pred, [node_id]), node_id)

    @_no_gc
    def descendants(self, node_id: str) -> list[Hit]:
        """Everything made from the node, directly or through any number of steps."""
        self._need(node_id)
        return self._hits(_bfs(self.g._succ, [node_id]), node_id)

    @_no_gc
    def at_risk(self, model_id: str) -> list[Hit]:
        """Models that trained, directly or through any number of generations, on data that
        descends from `model_id`, and that share its base fingerprint.

        A search over (node, passed-through-a-dataset) states: a model counts only when the
        walk from `model_id` to it crossed a dataset, so a plain copy or adapter of the model
        (derived_from alone) is a descendant but not a student of its data.
        """
        self._need(model_id)
        if self.g.nodes[model_id]["kind"] != NodeKind.MODEL.value:
            raise LineageError(
                f"at-risk needs a model, and {model_id} is a {self.g.nodes[model_id]['kind']}"
            )
        target = self.fingerprint(model_id)
        kind_of = self._kinds()
        datasets = self._datasets()
        model = NodeKind.MODEL.value
        succ = self.g._succ  # the raw adjacency: a view's lookups cost a quarter of the walk
        # Level by level: `pre` holds nodes reached without crossing a dataset yet (the
        # model's own copies, runs and probes), `post` those reached through one (the rest).
        pre: dict[str, int] = {model_id: 0}
        post: dict[str, int] = {}
        level_pre, level_post, depth = [model_id], [], 0
        while level_pre or level_post:
            depth += 1
            # Each side's children gathered in one set and sorted by set operations, which run
            # in C: on the benchmark lake's early models both sides reach tens of thousands of
            # nodes, and a per-child Python loop took most of a second.
            children: set[str] = set()
            for node in level_pre:
                children.update(succ[node])
            crossing = children & datasets
            crossing.difference_update(post)
            children.difference_update(datasets)
            children.difference_update(pre)
            pre.update(dict.fromkeys(children, depth))
            post.update(dict.fromkeys(crossing, depth))
            reached: set[str] = set()
            for node in level_post:
                reached.update(succ[node])
            reached.difference_update(post)
            post.update(dict.fromkeys(reached, depth))
            level_pre, level_post = list(children), [*crossing, *reached]
        found = {
            n: d
            for n, d in post.items()
            if kind_of[n] == model and n != model_id and self.fingerprint(n) == target
        }
        return self._hits(found, model_id)

    def path(self, a: str, b: str) -> list[Step]:
        """How two nodes are related: a flow path a -> b or b -> a when there is one, else
        the shortest path ignoring direction (two students of one dataset, say)."""
        self._need(a)
        self._need(b)
        if a == b:
            return []
        for src, dst in ((a, b), (b, a)):
            try:
                nodes = nx.shortest_path(self.g, src, dst)
            except nx.NetworkXNoPath:
                continue
            steps = [
                Step(u, v, self.g.edges[u, v]["kind"], True) for u, v in itertools.pairwise(nodes)
            ]
            return (
                steps if src == a else [Step(s.dst, s.src, s.kind, False) for s in reversed(steps)]
            )
        try:
            nodes = nx.shortest_path(self.g.to_undirected(as_view=True), a, b)
        except nx.NetworkXNoPath:
            raise LineageError(f"no lineage path between {a} and {b}") from None
        steps = []
        for u, v in itertools.pairwise(nodes):
            forward = self.g.has_edge(u, v)
            kind = self.g.edges[(u, v) if forward else (v, u)]["kind"]
            steps.append(Step(u, v, kind, forward))
        return steps

    def neighbourhood(self, node_id: str, depth: int | None = None) -> nx.DiGraph:
        """The node with its ancestors and descendants (up to `depth` hops each way), for
        drawing."""
        self._need(node_id)
        keep = {node_id}
        keep |= set(_bfs(self.g._pred, [node_id], depth))
        keep |= set(_bfs(self.g._succ, [node_id], depth))
        return self.g.subgraph(keep)

    # -- helpers ---------------------------------------------------------------------------
    def _need(self, node_id: str) -> None:
        if node_id not in self.g:
            raise LineageError(f"unknown node id {node_id!r}")

    def _hits(self, depths: dict[str, int], origin: str) -> list[Hit]:
        data = self.g.nodes
        order = sorted(
            (d, data[n]["kind"], data[n]["name"], n) for n, d in depths.items() if n != origin
        )
        return [Hit(n, d, self) for d, _, _, n in order]


def _bfs(adjacency: Any, sources: Sequence[str], limit: int | None = None) -> dict[str, int]:
    """Breadth-first depths over networkx adjacency (succ or pred), sources excluded."""
    depth = dict.fromkeys(sources, 0)
    queue = deque(depth)
    while queue:
        node = queue.popleft()
        d = depth[node] + 1
        if limit is not None and d > limit:
            continue
        for nxt in adjacency[node]:
            if nxt not in depth:
                depth[nxt] = d
                queue.append(nxt)
    for s in sources:
        depth.pop(s, None)
    return depth


def _interned(column: pa.ChunkedArray) -> list[str]:
    """Column values as Python strings, one object per distinct value: ids repeat across a
    million edges, and a shared str hashes once instead of once per edge."""
    encoded = pc.dictionary_encode(column).combine_chunks()
    values = np.array(encoded.dictionary.to_pylist(), dtype=object)
    return values[encoded.indices.to_numpy(zero_copy_only=False)].tolist()


def _add_edges_fast(
    g: nx.DiGraph, parents: list[str], children: list[str], kinds: list[str]
) -> None:
    """Fill the DiGraph's adjacency directly, sharing one attribute dict per edge kind.

    `add_edges_from` builds and updates a fresh dict per edge, which made loading a
    million-edge lake take over 10 s; this is about 5x faster. The view is read-only, so the
    shared dicts are never mutated. Two kinds on one pair are kept as "kind_a,kind_b". Edges
    whose ends are not in the nodes table (impossible through the store, which writes nodes
    first) are skipped and counted in the log.
    """
    succ, pred = g._succ, g._pred  # networkx's own adjacency (g.succ is a read-only view)
    shared: dict[str, dict[str, str]] = {}
    skipped = 0
    for p, c, k in zip(parents, children, kinds, strict=True):
        row = succ.get(p)
        if row is None or c not in pred:
            skipped += 1
            continue
        previous = row.get(c)
        if previous is not None and previous["kind"] != k:
            k = ",".join(sorted({*previous["kind"].split(","), k}))
        attrs = shared.get(k)
        if attrs is None:
            attrs = shared[k] = {"kind": k}
        row[c] = attrs
        pred[c][p] = attrs
    if skipped:
        log.warning("skipped %d lineage edges whose nodes are missing", skipped)
