"""A model's folder in the lake: made whole or not at all, described, then registered.

Every step that makes a model (a tiny base, a teacher, an MLP of the digits experiment, a
student) goes the same way, here: its files are written to a staging folder, then its card
(README.md) and, last, `germline.json` (what germline knows about it: the mark of a whole
model); the folder is saved to the lake in one move (one rename on a local lake, an upload with
the markers last on an object store); then the model is registered in lineage, its weights
fingerprinted. A rerun finds the model by its folder and registers it again, never rebuilds it.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from germline.lineage import LineageStore, Node
from germline.storage import MODEL_META, Lake, LakeFolders

CARD = "README.md"


def _meta(text: str) -> dict[str, Any]:
    """germline.json's text as what it says about the model (its "germline" section)."""
    return json.loads(text).get("germline", {})


def read_meta(folder: Path) -> dict[str, Any]:
    """What germline.json in a local model folder says ({} for a folder without one)."""
    meta_file = folder / MODEL_META
    return _meta(meta_file.read_text()) if meta_file.exists() else {}


def stored_meta(folders: LakeFolders, uri: str) -> dict[str, Any] | None:
    """What germline.json of a stored model says, read without fetching the weights; None
    when the folder has none (no model there, or one still being written)."""
    text = folders.read_text(f"{uri}/{MODEL_META}")
    return None if text is None else _meta(text)


def find_made(store: LineageStore, name: str, marker: str = MODEL_META) -> tuple[Path, dict] | None:
    """The model `name` if the lake holds it (its `marker` file is there): its local folder
    and metadata. None when it has still to be made."""
    folders = LakeFolders(store.lake)
    uri = store.lake.model(name)
    if not folders.exists(f"{uri}/{marker}"):
        return None
    folder = folders.fetch(uri)
    return folder, read_meta(folder)


def write_model(
    lake: Lake,
    name: str,
    write: Callable[[Path], None],
    meta: dict[str, Any],
    *,
    card: str | None = None,
    beside: tuple[str, ...] = (),
) -> Path:
    """Make `<lake>/models/NAME`: `write(folder)` puts the model's files (weights, tokenizer),
    then the card and germline.json ({"germline": meta}) follow, and the folder is saved to the
    lake whole. `beside` names what the folder may already hold that is not the model (a
    student's checkpoints). Returns the local folder."""

    def files(staging: Path) -> None:
        write(staging)
        if card is not None:
            (staging / CARD).write_text(card)
        (staging / MODEL_META).write_text(json.dumps({"germline": meta}, indent=2))

    return LakeFolders(lake).save(lake.model(name), files, beside=beside)


def register_model(
    store: LineageStore,
    name: str,
    folder: Path,
    attrs: dict[str, Any],
    parent: str | None = None,
) -> Node:
    """Register the lake's model `name` (its local copy is `folder`, which is hashed),
    derived_from `parent`, with `attrs` (what its germline.json says)."""
    return store.register_model(
        name, folder, parent=parent, attrs=attrs, uri=store.lake.model(name)
    )
