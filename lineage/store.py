"""The lineage store: the Python API that every step records into, over two Delta tables.

`<lake>/lineage/nodes` and `<lake>/lineage/edges` are append-only; a node or edge is written
at most once (its id, or its (src, dst, kind), is its key), so every register call is
idempotent and safe to run from many processes at once. Reads build a `LineageGraph`.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import networkx as nx
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds
from deltalake import DeltaTable
from deltalake.exceptions import DeltaError, TableNotFoundError

from germline.core import plain
from germline.lineage.errors import LineageError
from germline.lineage.fingerprint import weights_hash
from germline.lineage.graph import LineageGraph
from germline.lineage.schema import (
    EDGE_RULES,
    EDGES_SCHEMA,
    NODES_SCHEMA,
    Edge,
    EdgeKind,
    Node,
    NodeKind,
    check_name,
    edges_to_arrow,
    node_id,
    nodes_to_arrow,
)
from germline.lineage.tables import KeyedTable
from germline.storage import Lake


class LineageStore:
    """Register models, dataset versions and runs; link them; load the graph for queries."""

    def __init__(self, lake: Lake | str | None = None) -> None:
        self.lake = lake if isinstance(lake, Lake) else Lake.resolve(lake)
        opts = self.lake.storage_options
        self.nodes_table = KeyedTable(
            self.lake.lineage_nodes, "germline.lineage.nodes", NODES_SCHEMA, ["id"], opts
        )
        self.edges_table = KeyedTable(
            self.lake.lineage_edges,
            "germline.lineage.edges",
            EDGES_SCHEMA,
            ["src", "dst", "kind"],
            opts,
        )

    # -- registering -----------------------------------------------------------------------
    def register_model(
        self,
        name: str,
        path: str | Path,
        parent: str | None = None,
        attrs: Mapping[str, Any] | None = None,
        uri: str | None = None,
    ) -> Node:
        """A model from the weight files at `path`; `parent` is the model it was initialised
        from (its base fingerprint is then inherited from the parent). `uri` is where the
        model is kept when that is not `path`: its folder in an object-store lake, of which
        `path` is this node's copy."""
        check_name(name)
        parent_id = self.resolve(parent) if parent else None
        if parent_id is not None:  # before hashing weights, which can take minutes
            self._require_kind(parent_id, NodeKind.MODEL, "a model's parent")
        wh = weights_hash(path)
        node = Node(
            id=node_id(NodeKind.MODEL, name, wh, parent_id or ""),
            kind=NodeKind.MODEL,
            name=name,
            uri=uri or str(Path(path).expanduser().resolve()),
            weights_hash=wh,
            attrs=dict(attrs or {}),
        )
        edges = [Edge(node.id, parent_id, EdgeKind.DERIVED_FROM)] if parent_id else []
        return self._register(node, edges)

    def register_dataset(
        self,
        name: str,
        table: str,
        version: int | None = None,
        generated_by: Sequence[str] = (),
        filtered_by: Sequence[str] = (),
        attrs: Mapping[str, Any] | None = None,
        storage_options: dict[str, str] | None = None,
    ) -> Node:
        """One version of a Delta table (the latest when `version` is None)."""
        check_name(name)
        opts = storage_options if storage_options is not None else self.lake.storage_options
        uri = table if "://" in table else str(Path(table).expanduser().resolve())
        try:
            dt = DeltaTable(uri, version=version, storage_options=opts)
        except TableNotFoundError:
            raise LineageError(f"{table} is not a Delta table") from None
        except (DeltaError, OSError) as exc:
            what = f"version {version} of {table}" if version is not None else table
            raise LineageError(f"cannot open {what}: {plain(exc)}") from None
        actions = pa.table(dt.get_add_actions(flatten=True))
        rows = pc.sum(actions.column("num_records")).as_py() or 0 if actions.num_rows else 0
        node = Node(
            id=node_id(NodeKind.DATASET, name, uri, dt.version()),
            kind=NodeKind.DATASET,
            name=name,
            uri=uri,
            version=dt.version(),
            attrs={"rows": rows, "columns": dt.schema().to_arrow().names, **(attrs or {})},
        )
        edges = [Edge(node.id, self.resolve(g), EdgeKind.GENERATED_BY) for g in generated_by]
        edges += [Edge(node.id, self.resolve(f), EdgeKind.FILTERED_BY) for f in filtered_by]
        return self._register(node, edges)

    def register_run(
        self,
        name: str,
        key: str | None = None,
        params: Mapping[str, Any] | None = None,
        used: Sequence[str] = (),
    ) -> Node:
        """A run (generation, training, probing). Runs with the same name and `key` are the
        same run; without a key every call is a new run."""
        key = key or uuid.uuid4().hex
        node = Node(
            id=node_id(NodeKind.RUN, name, key),
            kind=NodeKind.RUN,
            name=name,
            attrs={"key": key, "params": dict(params or {})},
        )
        return self._register(node, [Edge(node.id, self.resolve(u), EdgeKind.USED) for u in used])

    def register_node(
        self,
        kind: NodeKind,
        name: str,
        key: str,
        attrs: Mapping[str, Any] | None = None,
        uri: str | None = None,
    ) -> Node:
        """Any other node (a probe result, a filter suite), identified by `key`."""
        node = Node(node_id(kind, name, key), kind, name, uri=uri, attrs=dict(attrs or {}))
        return self._register(node, [])

    def link(
        self, src: str, dst: str, kind: EdgeKind | str, attrs: Mapping[str, Any] | None = None
    ) -> Edge:
        """Add the edge `src -kind-> dst` (child to parent); idempotent."""
        edge = Edge(self.resolve(src), self.resolve(dst), EdgeKind(kind), dict(attrs or {}))
        self.add_edges([edge])
        return edge

    def _register(self, node: Node, edges: list[Edge]) -> Node:
        # Check the edges before writing the node, so bad input writes nothing.
        known = self._kinds_of({e.dst for e in edges}) | {node.id: node.kind}
        self._check_edges(edges, known)
        self.add_nodes([node])
        if edges:
            self.add_edges(edges)
        return node

    # -- bulk writes -----------------------------------------------------------------------
    def add_nodes(self, nodes: Iterable[Node], metadata: dict[str, str] | None = None) -> int:
        """Write nodes not yet present; returns how many were new."""
        rows = nodes_to_arrow(list(nodes))
        return self.nodes_table.append_new(rows, metadata=metadata).num_rows

    def add_edges(self, edges: Iterable[Edge], metadata: dict[str, str] | None = None) -> int:
        """Write edges not yet present, after checking endpoints, kinds and acyclicity against
        the very snapshot the commit is based on; returns how many were new."""
        edge_list = list(edges)
        if not edge_list:
            return 0
        ends = {e.src for e in edge_list} | {e.dst for e in edge_list}
        kinds = self._kinds_of(ends)
        self._check_edges(edge_list, kinds)

        def validate(snapshot: DeltaTable | None, new: pa.Table) -> None:
            existing = (
                self.edges_table._scan(snapshot, ["src", "dst", "kind"], None)
                if snapshot is not None
                else EDGES_SCHEMA.empty_table()
            )
            self._check_acyclic(existing, new, kinds)

        rows = edges_to_arrow(edge_list)
        return self.edges_table.append_new(rows, validate=validate, metadata=metadata).num_rows

    # -- checks ----------------------------------------------------------------------------
    def _kinds_of(self, ids: set[str]) -> dict[str, NodeKind]:
        """Kinds of the given ids; unknown ids are absent from the result."""
        if not ids:
            return {}
        table = self.nodes_table.read(["id", "kind"], filter=ds.field("id").isin(list(ids)))
        return {
            i: NodeKind(k)
            for i, k in zip(
                table.column("id").to_pylist(), table.column("kind").to_pylist(), strict=True
            )
        }

    @staticmethod
    def _check_edges(edges: list[Edge], kinds: Mapping[str, NodeKind]) -> None:
        for e in edges:
            for end in (e.src, e.dst):
                if end not in kinds:
                    raise LineageError(
                        f"edge {e.kind.value} {e.src} -> {e.dst}: unknown node {end!r}"
                    )
            if e.src == e.dst:
                raise LineageError(f"edge {e.kind.value} from {e.src} to itself would be a cycle")
            pair = (kinds[e.src], kinds[e.dst])
            if pair not in EDGE_RULES[e.kind]:
                allowed = ", ".join(f"{a}->{b}" for a, b in sorted(EDGE_RULES[e.kind]))
                raise LineageError(
                    f"edge {e.kind.value} cannot join a {pair[0]} to a {pair[1]} "
                    f"({e.src} -> {e.dst}); it joins {allowed}"
                )

    @staticmethod
    def _check_acyclic(existing: pa.Table, new: pa.Table, kinds: Mapping[str, NodeKind]) -> None:
        """The graph stays a DAG, and a model keeps at most one derived_from parent."""
        derived = EdgeKind.DERIVED_FROM.value
        new_derived = new.filter(pc.equal(new.column("kind"), derived))
        if new_derived.num_rows:
            old_derived = existing.filter(pc.equal(existing.column("kind"), derived))
            parents: dict[str, str] = dict(
                zip(
                    old_derived.column("src").to_pylist(),
                    old_derived.column("dst").to_pylist(),
                    strict=True,
                )
            )
            for child, parent in zip(
                new_derived.column("src").to_pylist(),
                new_derived.column("dst").to_pylist(),
                strict=True,
            ):
                if parents.setdefault(child, parent) != parent:
                    raise LineageError(
                        f"{child} already derives from {parents[child]}; a model is initialised "
                        f"from one parent, not also from {parent}"
                    )
        # Stored edges run child -> parent; a cycle either way is a cycle.
        g = nx.DiGraph()
        g.add_edges_from(
            zip(existing.column("src").to_pylist(), existing.column("dst").to_pylist(), strict=True)
        )
        new_pairs = list(
            zip(new.column("src").to_pylist(), new.column("dst").to_pylist(), strict=True)
        )
        if len(new_pairs) <= 16:
            for child, parent in new_pairs:
                if child in g and parent in g and nx.has_path(g, parent, child):
                    cycle = nx.shortest_path(g, parent, child)
                    raise LineageError(
                        "edge "
                        + f"{child} -> {parent} would close a cycle: "
                        + " -> ".join([child, *cycle])
                    )
                g.add_edge(child, parent)
            return
        g.add_edges_from(new_pairs)
        # is_directed_acyclic_graph is one linear topological sort; find_cycle on a DAG
        # re-walks every start node's whole reachable set (quadratic), so run it only to
        # name a cycle that is known to exist.
        if nx.is_directed_acyclic_graph(g):
            return
        cycle = nx.find_cycle(g)
        raise LineageError("edges would close a cycle: " + " -> ".join(u for u, _ in cycle))

    def _require_kind(self, node: str, kind: NodeKind, what: str) -> None:
        found = self._kinds_of({node}).get(node)
        if found != kind:
            raise LineageError(f"{what} must be a {kind.value}, and {node} is a {found}")

    # -- reading ---------------------------------------------------------------------------
    def graph(self) -> LineageGraph:
        """Load both tables into the networkx view."""
        return LineageGraph.from_arrow(self.nodes_table.read(), self.edges_table.read())

    def resolve(self, ref: str) -> str:
        """A node id from an id, a unique id prefix or a unique name (see LineageGraph.resolve)."""
        table = self.nodes_table.read(["id", "name", "kind"])
        ids = table.column("id").to_pylist()
        if ref in set(ids):
            return ref
        g = nx.DiGraph()
        g.add_nodes_from(
            (i, {"name": n}) for i, n in zip(ids, table.column("name").to_pylist(), strict=True)
        )
        return LineageGraph(g).resolve(ref)
