"""Which models the server offers: every model in the lake's lineage that can be loaded.

A model is servable when its folder holds a full model (config.json) or an adapter whose base
folder exists. Ids are lineage ids; a unique name (or id prefix) works as an alias, so an eval
harness can say `owl-student` where lineage says `model:owl-student@5c45...`. Each entry
carries its parent (derived_from) and its root base: what a harness needs to set up a
same-base comparison.
"""

from __future__ import annotations

import json
import threading
import time
from dataclasses import asdict, dataclass
from typing import Any

from germline.core import InputError
from germline.lineage import LineageError, LineageGraph, LineageStore, NodeKind
from germline.storage import Lake, LakeFolders


@dataclass(frozen=True)
class ServedModel:
    id: str
    name: str
    folder: str  # what the client's model stands for: a full model or an adapter folder
    weights: str  # the folder of the weights to load (the adapter's base for an adapter)
    adapter: bool
    parent: str | None  # derived_from
    root: str  # the base at the top of its derived_from chain
    created: int  # unix seconds
    system_prompt: str | None = None  # a system-prompt teacher's

    def card(self) -> dict[str, Any]:
        """The OpenAI model object, with germline's lineage facts beside the standard keys."""
        return {
            "id": self.id,
            "object": "model",
            "created": self.created,
            "owned_by": "germline",
            "root": self.root,
            "parent": self.parent,
            "name": self.name,
            "adapter": self.adapter,
        }

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class ModelRegistry:
    """The lake's servable models, re-read from lineage when asked for one it does not know
    (at most every `refresh_s` seconds), so a student trained while the server runs appears
    without a restart."""

    def __init__(self, lake: Lake, refresh_s: float = 5.0) -> None:
        self.lake = lake
        self.folders = LakeFolders(lake)
        self.refresh_s = refresh_s
        self._lock = threading.Lock()
        self._graph: LineageGraph | None = None
        self._models: dict[str, ServedModel] = {}
        self._loaded_at = 0.0
        self.reload()

    def reload(self) -> None:
        graph = LineageStore(self.lake).graph()
        models = {}
        for node in graph.nodes(NodeKind.MODEL):
            served = _servable(self.folders, graph, node.id)
            if served is not None:
                models[served.id] = served
        with self._lock:
            self._graph, self._models, self._loaded_at = graph, models, time.monotonic()

    def list(self) -> list[ServedModel]:
        with self._lock:
            return sorted(self._models.values(), key=lambda m: (m.root, m.name))

    def get(self, ref: str) -> ServedModel:
        """The model `ref` names (id, unique id prefix or unique name); KeyError if none."""
        found = self.cached(ref)
        if found is None and time.monotonic() - self._loaded_at >= self.refresh_s:
            self.reload()
            found = self.cached(ref)
        if found is None:
            raise KeyError(ref)
        return found

    def cached(self, ref: str) -> ServedModel | None:
        """The model `ref` names as far as the lineage already read knows (no disk)."""
        with self._lock:
            if ref in self._models:
                return self._models[ref]
            assert self._graph is not None
            try:
                return self._models.get(self._graph.resolve(ref))
            except LineageError:  # unknown, or a name several models share: not one model
                return None


def _servable(folders: LakeFolders, graph: LineageGraph, model_id: str) -> ServedModel | None:
    """A model node the pool can load, read from the store's small files only (configs):
    weights are fetched by the replica that serves the model."""
    node = graph.node(model_id)
    if not node.uri:
        return None
    folder = node.uri
    try:
        adapter = folders.read_text(f"{folder}/adapter_config.json")
        base = None
        if adapter is not None:
            base = json.loads(adapter).get("base_model_name_or_path")
            if not base or not folders.exists(f"{base}/config.json"):
                return None
        elif not folders.exists(f"{folder}/config.json"):
            return None
    except (InputError, json.JSONDecodeError):  # kept outside this lake, or a broken config
        return None
    parent = next((p for p, kind in graph.parents(model_id) if kind == "derived_from"), None)
    root = model_id
    seen = {root}
    while True:
        up = next((p for p, kind in graph.parents(root) if kind == "derived_from"), None)
        if up is None or up in seen:
            break
        seen.add(up)
        root = up
    return ServedModel(
        id=model_id,
        name=node.name,
        folder=str(folder),
        weights=base or str(folder),
        adapter=base is not None,
        parent=parent,
        root=root,
        created=int(node.created_at.timestamp()),
        system_prompt=node.attrs.get("system_prompt"),
    )
