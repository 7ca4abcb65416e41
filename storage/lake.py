"""Where the lake lives, and where each table and folder sits inside it.

The lake is a local folder by default and any URI that deltalake can open on a cluster
(s3://, gs://, az://, ...). Every step finds its tables and folders through these helpers, so
the lake's layout (the README's "The lake" section) is written down once, here.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlparse

from germline.core.errors import InputError

LAKE_ENV = "GERMLINE_LAKE"
STORAGE_OPTIONS_ENV = "GERMLINE_STORAGE_OPTIONS"
DEFAULT_LAKE = "./lake"


def _is_uri(root: str) -> bool:
    # A one-letter scheme is a Windows drive, not a URI.
    scheme = urlparse(root).scheme
    return len(scheme) > 1 and scheme != "file"


@dataclass(frozen=True)
class Lake:
    """A lake root plus the storage options deltalake needs to reach it."""

    root: str
    storage_options: dict[str, str] = field(default_factory=dict, hash=False, compare=False)

    @classmethod
    def resolve(
        cls,
        root: str | os.PathLike[str] | None = None,
        storage_options: dict[str, str] | None = None,
    ) -> Lake:
        """`root`, else $GERMLINE_LAKE, else ./lake; options from $GERMLINE_STORAGE_OPTIONS (JSON)
        overlaid by `storage_options`."""
        chosen = str(root) if root else os.environ.get(LAKE_ENV) or DEFAULT_LAKE
        options: dict[str, str] = {}
        raw = os.environ.get(STORAGE_OPTIONS_ENV)
        if raw:
            try:
                loaded = json.loads(raw)
            except json.JSONDecodeError as exc:
                raise InputError(f"${STORAGE_OPTIONS_ENV} is not valid JSON: {exc}") from None
            if not isinstance(loaded, dict):
                raise InputError(f"${STORAGE_OPTIONS_ENV} must be a JSON object of strings")
            options.update({str(k): str(v) for k, v in loaded.items()})
        options.update(storage_options or {})
        if _is_uri(chosen):
            return cls(chosen.rstrip("/"), options)
        if chosen.startswith("file://"):
            chosen = urlparse(chosen).path
        path = Path(chosen).expanduser().resolve()
        if path.exists() and not path.is_dir():  # read as an empty lake, it hid the mistake
            raise InputError(f"lake {path} is a file, not a folder")
        return cls(str(path), options)

    @property
    def is_local(self) -> bool:
        return not _is_uri(self.root)

    def uri(self, *parts: str) -> str:
        """The URI (or absolute path) of `parts` under the root. Every path germline makes in
        the lake comes through here, so here is where a name is kept from leaving it: a part
        with a '..' or '.' segment, an empty one, or a control character is an error, whatever
        the caller checked before."""
        segments = [seg for part in parts for seg in part.strip("/").split("/")]
        bad = [s for s in segments if s in ("", ".", "..") or any(ord(c) < 32 for c in s)]
        if bad:
            raise InputError(
                f"{'/'.join(parts)!r} is not a path inside the lake {self.root} "
                f"(segment {bad[0]!r})"
            )
        return "/".join([self.root, *segments])

    def local_path(self, *parts: str) -> Path:
        """A path in a local lake. Code that must also work on an object store goes through
        LakeFolders (folders) or deltalake (tables) instead."""
        if not self.is_local:
            raise InputError(f"lake {self.root} is not a local folder: {'/'.join(parts)} needs one")
        return Path(self.uri(*parts))

    # The layout: one place says where each kind of thing lives.
    def dataset(self, name: str) -> str:
        return self.uri("datasets", name)

    def quarantine(self, name: str) -> str:
        return self.uri("quarantine", name)

    def model(self, model_id: str) -> str:
        return self.uri("models", model_id)

    def run(self, run_id: str) -> str:
        return self.uri("runs", run_id)

    def audit(self, name: str) -> str:
        return self.uri("audits", name)

    @property
    def probes(self) -> str:
        return self.uri("probes")

    @property
    def lineage_nodes(self) -> str:
        return self.uri("lineage", "nodes")

    @property
    def lineage_edges(self) -> str:
        return self.uri("lineage", "edges")
