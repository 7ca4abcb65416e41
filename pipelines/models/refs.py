"""Finding a model a config names: a lineage id or name, a local folder, or a cached hub id.

Every command that reads a model (generate's teacher, train's base and teacher) resolves it the
same way, and a folder or cached hub model seen for the first time is registered in lineage,
an adapter after its base, so it gets a node and a base fingerprint like any other model.
"""

from __future__ import annotations

from pathlib import Path

from germline.core import InputError
from germline.engines import EngineError, adapter_base, resolve_model_dir
from germline.engines.loading import ADAPTER, FULL_MODEL
from germline.lineage import LineageStore, Node, NodeKind, UnknownNode
from germline.storage import Lake, LakeFolders

MODEL_MARKERS = (FULL_MODEL, ADAPTER)


def find_model(store: LineageStore, ref: str) -> Node | None:
    """The model `ref` names, registering a folder or cached hub model on first sight; None
    when nothing matches (an ambiguous name is an error, not a miss)."""
    graph = store.graph()
    try:
        return graph.node(graph.resolve(ref))
    except UnknownNode:  # not in lineage yet: perhaps a folder or a cached hub model
        pass
    folder = _local_folder(ref)
    if folder is not None:
        return _register_folder(store, folder, ref)
    return None


def model_folder(lake: Lake, node: Node, what: str = "model") -> Path:
    """The local folder holding a model node's weights (or adapter), checked: on an
    object-store lake, this node's cached copy."""
    uri = model_uri(lake, node, what)
    try:
        return resolve_model_dir(LakeFolders(lake).fetch(uri))
    except EngineError as exc:
        raise EngineError(f"{what} {node.id}: {exc}") from None


def model_uri(lake: Lake, node: Node, what: str = "model") -> str:
    """Where a model node is kept (a path, or a URI in an object-store lake), checked to
    hold a model without downloading it: what to hand to workers that load it themselves."""
    if node.kind is not NodeKind.MODEL or not node.uri:
        raise InputError(f"{node.id} is not a model with weights on disk")
    folders = LakeFolders(lake)
    if not any(folders.exists(f"{node.uri}/{marker}") for marker in MODEL_MARKERS):
        where = "does not exist" if not folders.names(node.uri) else "holds no model"
        raise InputError(
            f"{what} {node.id}: {node.uri} {where} (neither {FULL_MODEL} nor {ADAPTER})"
        )
    return node.uri


def _local_folder(ref: str) -> Path | None:
    """A model folder on disk, or the local Hugging Face cache's copy of a hub id."""
    path = Path(ref).expanduser()
    if path.is_dir():
        return path.resolve()
    if ref.count("/") != 1 or ref.startswith((".", "/", "~")):
        return None
    try:
        from huggingface_hub import snapshot_download

        return Path(snapshot_download(ref, local_files_only=True))
    except Exception:  # not cached (or not a hub id at all): the caller says what to do
        return None


def _register_folder(store: LineageStore, folder: Path, ref: str) -> Node:
    """Register a model folder (and, for an adapter, its base first)."""
    resolve_model_dir(folder)
    base = adapter_base(folder)
    name = _safe_name(ref if not Path(ref).expanduser().is_dir() else folder.name)
    parent = None
    if base is not None:
        base_folder = _local_folder(base)
        if base_folder is None:
            raise InputError(f"adapter {folder} names base {base!r}, which is not available")
        parent = _register_folder(store, base_folder, base).id
    return store.register_model(name, folder, parent=parent)


def _safe_name(ref: str) -> str:
    return "".join(c if c.isalnum() or c in "._/+-" else "-" for c in ref).strip("-/") or "model"
