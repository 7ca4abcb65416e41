"""Where germline keeps things: the lake's location and layout, and its folders.

A lake is a local folder or an object store. Tables (datasets, quarantine, lineage, probes)
go through deltalake; folders of files (models, run reports) go through `LakeFolders`, a plain
path on a local lake and a per-node cached copy on an object store. Below lineage: the graph
is one of the things kept here. Imports only the ground floor (`core`).
"""

from germline.storage.folders import MODEL_META, LakeFolders
from germline.storage.lake import Lake

__all__ = ["MODEL_META", "Lake", "LakeFolders"]
