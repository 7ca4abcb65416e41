"""germline's ground floor: the lineage graph of models, datasets, runs and probes.

Imports nothing else of germline; every other package records into it.
"""

from germline.lineage.errors import LineageError
from germline.lineage.fingerprint import weights_hash
from germline.lineage.folders import LakeFolders
from germline.lineage.graph import Hit, LineageGraph, Step
from germline.lineage.lake import Lake
from germline.lineage.schema import Edge, EdgeKind, Node, NodeKind, node_id
from germline.lineage.store import LineageStore

__all__ = [
    "Edge",
    "EdgeKind",
    "Hit",
    "Lake",
    "LakeFolders",
    "LineageError",
    "LineageGraph",
    "LineageStore",
    "Node",
    "NodeKind",
    "Step",
    "node_id",
    "weights_hash",
]
