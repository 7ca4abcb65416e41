"""What the explorer shows of one node, by kind: a model's card and `germline.json`, a dataset
version's Delta history with germline's commit metadata, its row and quarantine counts and a
sample of rows, a run's parameters (an experiment run's report and pictures), a probe's
shares with their interval.

Files are read only where lineage says the node lives and only inside the lake: a node
registered from a folder elsewhere shows its lineage record, not the folder. A report's files
are looked up by name in the run folder's own listing, so no request names a path.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
from deltalake import DeltaTable

from germline.core import InputError
from germline.lineage import LineageGraph, NodeKind
from germline.storage import Lake, LakeFolders

SAMPLE_ROWS = 10
HISTORY = 50
NEIGHBOURS = 50
REPORT_FILES = {".md": "text/markdown; charset=utf-8", ".json": "application/json",
                ".png": "image/png", ".svg": "image/svg+xml"}  # fmt: skip
SAMPLE_COLUMNS = ("prompt_id", "prompt", "completion", "reason")


def node_details(lake: Lake, graph: LineageGraph, node_id: str) -> dict[str, Any]:
    """Everything the details panel shows of `node_id`."""
    node = graph.node(node_id)
    parents, children = graph.parents(node_id), graph.children(node_id)
    out: dict[str, Any] = {
        **node.to_dict(),
        "fingerprint": graph.fingerprint(node_id),
        "parents": [_link(graph, n, k) for n, k in parents[:NEIGHBOURS]],
        "children": [_link(graph, n, k) for n, k in children[:NEIGHBOURS]],
        "parents_total": len(parents),
        "children_total": len(children),
    }
    folders = LakeFolders(lake)
    inside = node.uri is not None and node.uri.startswith(lake.root + "/")
    if node.kind is NodeKind.MODEL:
        out["model"] = _model(folders, node.uri) if inside else None
    elif node.kind is NodeKind.DATASET:
        out["dataset"] = _dataset(lake, node.name, node.uri, node.version) if inside else None
    elif node.kind is NodeKind.PROBE:
        out["probe"] = _probe(node.attrs)
    elif node.kind is NodeKind.RUN and isinstance(node.attrs.get("key"), str):
        out["report"] = _report(lake, folders, node.attrs["key"])
    return out


def _link(graph: LineageGraph, other: str, kind: str) -> dict[str, str]:
    data = graph.g.nodes[other]
    return {"id": other, "edge": kind, "kind": data["kind"], "name": data["name"]}


def _model(folders: LakeFolders, uri: str) -> dict[str, Any]:
    """The card (README.md) and germline's record of how the model was made."""
    record = folders.read_text(f"{uri}/germline.json")
    return {"card": folders.read_text(f"{uri}/README.md"),
            "germline": json.loads(record) if record else None}  # fmt: skip


def _dataset(lake: Lake, name: str, uri: str, version: int | None) -> dict[str, Any]:
    """The table's commits (newest first, germline's metadata kept), the rows of this
    version, a sample of them, and the quarantine's rows by reason."""
    opts = lake.storage_options
    try:
        table = DeltaTable(uri, storage_options=opts)
    except Exception as exc:  # a table lineage names but the lake lost
        return {"error": f"no Delta table at {uri}: {type(exc).__name__}"}
    history = [_commit(c) for c in table.history(HISTORY)]
    if version is not None and version != table.version():
        table = DeltaTable(uri, version=version, storage_options=opts)
    out = {"version": table.version(), "rows": _rows(table), "history": history,
           "sample": _sample(table), "quarantine": None}  # fmt: skip
    try:
        quarantine = DeltaTable(lake.quarantine(name), storage_options=opts)
    except Exception:  # no quarantine table: nothing was rejected
        return out
    reasons = (
        quarantine.to_pyarrow_table(columns=["reason"])
        .group_by("reason")
        .aggregate([("reason", "count")])
    )
    counts = dict(zip(reasons.column("reason").to_pylist(),
                      reasons.column("reason_count").to_pylist(), strict=True))  # fmt: skip
    out["quarantine"] = {"rows": sum(counts.values()), "by_reason": counts,
                         "sample": _sample(quarantine)}  # fmt: skip
    return out


def _commit(commit: dict[str, Any]) -> dict[str, Any]:
    metrics = commit.get("operationMetrics") or {}
    germline = {}
    for key, value in commit.items():
        if key.startswith("germline."):
            try:
                germline[key] = json.loads(value) if value[:1] in "{[" else value
            except (TypeError, ValueError):
                germline[key] = value
    stamp = commit.get("timestamp")
    return {
        "version": commit.get("version"),
        "timestamp": datetime.fromtimestamp(stamp / 1000, UTC).isoformat() if stamp else None,
        "operation": commit.get("operation"),
        "added_rows": metrics.get("num_added_rows"),
        "germline": germline,
    }


def _rows(table: DeltaTable) -> int:
    """Rows of the version from the log's file statistics, without reading the data."""
    actions = pa.table(table.get_add_actions(flatten=True))
    return int(pc.sum(actions.column("num_records")).as_py() or 0) if actions.num_rows else 0


def _sample(table: DeltaTable) -> list[dict[str, Any]]:
    names = {field.name for field in table.schema().fields}
    columns = [c for c in SAMPLE_COLUMNS if c in names] or None
    rows = table.to_pyarrow_dataset().head(SAMPLE_ROWS, columns=columns)
    return rows.to_pylist()


def _probe(attrs: Any) -> dict[str, Any]:
    """The trait's share with its interval, and every candidate's share, largest first."""
    counts = attrs.get("counts") or {}
    return {
        "target": attrs.get("target"),
        "share": attrs.get("share"),
        "low": attrs.get("low"),
        "high": attrs.get("high"),
        "method": attrs.get("method"),
        "trials": attrs.get("trials"),
        "shares": sorted(counts.items(), key=lambda kv: -kv[1]),
    }


def _report(lake: Lake, folders: LakeFolders, run_id: str) -> dict[str, Any] | None:
    """An experiment run's report.md and the names of the files beside it."""
    try:
        uri = lake.run(run_id)
    except InputError:
        return None
    text = folders.read_text(f"{uri}/report.md")
    if text is None:
        return None
    files = [n for n in folders.names(uri) if _suffix(n) in REPORT_FILES]
    return {"run": run_id, "markdown": text, "files": files,
            "pictures": [n for n in files if _suffix(n) in (".png", ".svg")]}  # fmt: skip


def report_file(lake: Lake, run_id: str, name: str) -> tuple[bytes, str]:
    """One file of a run's report, found by name in the run folder's listing (InputError
    for any name that is not there: nothing a request sends becomes a path by itself)."""
    folders = LakeFolders(lake)
    if run_id not in folders.names(lake.uri("runs")):
        raise InputError(f"no run {run_id!r}")
    uri = lake.run(run_id)
    if _suffix(name) not in REPORT_FILES or name not in folders.names(uri):
        raise InputError(f"no report file {name!r} in run {run_id!r}")
    fs, path = folders.filesystem_path(f"{uri}/{name}")
    with fs.open_input_stream(path) as stream:
        return stream.read(), REPORT_FILES[_suffix(name)]


def _suffix(name: str) -> str:
    return "." + name.rsplit(".", 1)[-1].lower() if "." in name else ""
