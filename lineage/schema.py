"""What the lineage graph is made of: node and edge kinds, their rules, ids, and table schemas.

Edges are stored child -> parent, the way one says them: "the dataset was generated_by the
teacher", "the student was trained_on the dataset". The in-memory view turns them around so
that they point the way data and weights flow (parent -> child).
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any, TypeVar

import pyarrow as pa

from germline.lineage.errors import LineageError


class NodeKind(StrEnum):
    MODEL = "model"  # a base model, a teacher (adapter or weights), a student
    DATASET = "dataset"  # one version of a Delta table
    RUN = "run"  # a generation, training or probing run
    PROBE = "probe"  # the result of a trait probe on one model
    SUITE = "suite"  # a filter or expectation-suite config, identified by its hash


class EdgeKind(StrEnum):
    DERIVED_FROM = "derived_from"  # model -> the model it was initialised from
    GENERATED_BY = "generated_by"  # output -> the model or run that made it
    TRAINED_ON = "trained_on"  # model -> dataset version it was fine-tuned on
    FILTERED_BY = "filtered_by"  # dataset -> the filter/suite (or run) that vetted it
    PROBED = "probed"  # probe result -> the model it measured
    USED = "used"  # run -> an input it read (model, dataset, suite)


M, D, R, P, S = NodeKind.MODEL, NodeKind.DATASET, NodeKind.RUN, NodeKind.PROBE, NodeKind.SUITE

# (child kind, parent kind) pairs each edge kind may join.
EDGE_RULES: dict[EdgeKind, frozenset[tuple[NodeKind, NodeKind]]] = {
    EdgeKind.DERIVED_FROM: frozenset({(M, M)}),
    EdgeKind.GENERATED_BY: frozenset({(D, M), (D, R), (M, R), (P, R)}),
    EdgeKind.TRAINED_ON: frozenset({(M, D)}),
    EdgeKind.FILTERED_BY: frozenset({(D, S), (D, R)}),
    EdgeKind.PROBED: frozenset({(P, M)}),
    EdgeKind.USED: frozenset({(R, M), (R, D), (R, S)}),
}

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._/+-]{0,199}$")


def check_name(name: str) -> str:
    """Names go into ids and, for models, datasets and runs, into paths under the lake; so
    they keep to a safe ASCII alphabet, and '/' only separates real segments: no '.' or '..'
    segment, no empty one, nothing absolute. A name that breaks the rule is refused
    whole (unicode included), never cleaned up into another name."""
    if not isinstance(name, str) or not _NAME.match(name):
        raise LineageError(
            f"invalid name {name!r}: use ASCII letters, digits and . _ / + -, starting with a "
            "letter or digit (no spaces, ':' or '@')"
        )
    if any(part in ("", ".", "..") for part in name.split("/")):
        raise LineageError(
            f"invalid name {name!r}: '/' separates segments, and no segment may be empty, "
            "'.' or '..'"
        )
    return name


K = TypeVar("K", bound=StrEnum)


def parse_kind(enum: type[K], value: str, what: str) -> K:
    try:
        return enum(value)
    except ValueError:
        choices = ", ".join(k.value for k in enum)
        raise LineageError(f"unknown {what} {value!r}: expected one of {choices}") from None


def node_id(kind: NodeKind, name: str, *identity: object) -> str:
    """A stable id: the same kind, name and identity always give the same id.

    The identity is what makes two registrations "the same thing": a model's weights hash and
    parent, a dataset's table URI and version, a run's key.
    """
    digest = hashlib.sha256("\0".join([kind.value, name, *map(str, identity)]).encode())
    return f"{kind.value}:{check_name(name)}@{digest.hexdigest()[:12]}"


def now() -> datetime:
    return datetime.now(UTC)


@dataclass(frozen=True)
class Node:
    """One thing in the graph. `attrs` holds kind-specific facts (hyperparameters, row counts)."""

    id: str
    kind: NodeKind
    name: str
    uri: str | None = None
    version: int | None = None
    weights_hash: str | None = None
    attrs: Mapping[str, Any] = field(default_factory=dict)
    created_at: datetime = field(default_factory=now)

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "kind": self.kind.value,
            "name": self.name,
            "uri": self.uri,
            "version": self.version,
            "weights_hash": self.weights_hash,
            "attrs": dict(self.attrs),
            "created_at": self.created_at.isoformat(),
        }


@dataclass(frozen=True)
class Edge:
    """`src` (the child) relates to `dst` (the parent) by `kind`."""

    src: str
    dst: str
    kind: EdgeKind
    attrs: Mapping[str, Any] = field(default_factory=dict)
    created_at: datetime = field(default_factory=now)

    def to_dict(self) -> dict[str, Any]:
        return {
            "src": self.src,
            "dst": self.dst,
            "kind": self.kind.value,
            "attrs": dict(self.attrs),
            "created_at": self.created_at.isoformat(),
        }


_TS = pa.timestamp("us", tz="UTC")

NODES_SCHEMA = pa.schema(
    [
        pa.field("id", pa.string(), nullable=False),
        pa.field("kind", pa.string(), nullable=False),
        pa.field("name", pa.string(), nullable=False),
        pa.field("uri", pa.string()),
        pa.field("version", pa.int64()),
        pa.field("weights_hash", pa.string()),
        pa.field("attrs", pa.string()),
        pa.field("created_at", _TS, nullable=False),
    ]
)

EDGES_SCHEMA = pa.schema(
    [
        pa.field("src", pa.string(), nullable=False),
        pa.field("dst", pa.string(), nullable=False),
        pa.field("kind", pa.string(), nullable=False),
        pa.field("attrs", pa.string()),
        pa.field("created_at", _TS, nullable=False),
    ]
)


def _attrs_json(attrs: Mapping[str, Any]) -> str | None:
    return json.dumps(dict(attrs), sort_keys=True, default=str) if attrs else None


def nodes_to_arrow(nodes: list[Node]) -> pa.Table:
    return pa.Table.from_pydict(
        {
            "id": [n.id for n in nodes],
            "kind": [n.kind.value for n in nodes],
            "name": [n.name for n in nodes],
            "uri": [n.uri for n in nodes],
            "version": [n.version for n in nodes],
            "weights_hash": [n.weights_hash for n in nodes],
            "attrs": [_attrs_json(n.attrs) for n in nodes],
            "created_at": [n.created_at for n in nodes],
        },
        schema=NODES_SCHEMA,
    )


def edges_to_arrow(edges: list[Edge]) -> pa.Table:
    return pa.Table.from_pydict(
        {
            "src": [e.src for e in edges],
            "dst": [e.dst for e in edges],
            "kind": [e.kind.value for e in edges],
            "attrs": [_attrs_json(e.attrs) for e in edges],
            "created_at": [e.created_at for e in edges],
        },
        schema=EDGES_SCHEMA,
    )


def node_from_row(row: Mapping[str, Any]) -> Node:
    return Node(
        id=row["id"],
        kind=NodeKind(row["kind"]),
        name=row["name"],
        uri=row.get("uri"),
        version=row.get("version"),
        weights_hash=row.get("weights_hash"),
        attrs=json.loads(row["attrs"]) if row.get("attrs") else {},
        created_at=row["created_at"],
    )
