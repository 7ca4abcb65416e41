"""germline's lineage floor: the graph of models, datasets, runs and probes, and its store.

Imports only the floors below it (`core`, and `storage` for where the lake is); every other
package records into it.
"""

from germline.lineage.errors import AmbiguousNode, LineageError, UnknownNode
from germline.lineage.fingerprint import weights_hash
from germline.lineage.graph import Hit, LineageGraph, Step
from germline.lineage.schema import Edge, EdgeKind, Node, NodeKind, check_name, node_id
from germline.lineage.store import LineageStore

__all__ = [
    "AmbiguousNode",
    "Edge",
    "EdgeKind",
    "Hit",
    "LineageError",
    "LineageGraph",
    "LineageStore",
    "Node",
    "NodeKind",
    "Step",
    "UnknownNode",
    "check_name",
    "node_id",
    "weights_hash",
]
