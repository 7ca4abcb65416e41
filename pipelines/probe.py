"""`germline probe`: run a trait probe against a served model, keep the result in the lake.

Every result is a row of `<lake>/probes` (a Delta table: the share, its interval, the counts,
the per-question shares and the settings) and, when the model is in the lake's lineage, a
`probe` node with a `probed` edge to it, so lineage answers "what was this student measured
at, and how".
"""

from __future__ import annotations

import hashlib
import json
import time
from datetime import UTC, datetime
from typing import Any

import pyarrow as pa
from deltalake import write_deltalake

from germline.checks.probes import ProbeResult, ProbeSettings, ProbeSpec, run_probe
from germline.core import InputError
from germline.lineage import EdgeKind, LineageStore, NodeKind, UnknownNode
from germline.storage import Lake

PROBE_SCHEMA = pa.schema(
    [
        ("probe_id", pa.string()),
        ("probe", pa.string()),
        ("method", pa.string()),
        ("model", pa.string()),
        ("target", pa.string()),
        ("share", pa.float64()),
        ("low", pa.float64()),
        ("high", pa.float64()),
        ("trials", pa.int64()),
        ("hits", pa.int64()),
        ("counts", pa.string()),  # JSON
        ("per_question", pa.string()),  # JSON
        ("settings", pa.string()),  # JSON
        ("base_url", pa.string()),
        ("lineage_node", pa.string()),
        ("created_at", pa.timestamp("us", tz="UTC")),
    ]
)


def probe_model(
    lake: Lake,
    client: Any,
    base_url: str,
    model: str,
    spec: ProbeSpec,
    how: ProbeSettings,
) -> tuple[ProbeResult, str | None]:
    """Probe `model`, store the result; returns it with its lineage node id (None when the
    model is not in the lake's lineage, say a model of another server)."""
    try:
        canonical = client.models.retrieve(model).id
    except Exception as exc:  # the server's own 404 or connection error, said plainly
        raise InputError(f"cannot reach model {model!r} at {base_url}: {exc}") from None
    result = run_probe(client, canonical, spec, how)
    store = LineageStore(lake)
    node_id = None
    try:
        model_id = store.graph().resolve(canonical)
    except UnknownNode:  # a model of another server: stored, not linked
        model_id = None
    made = [canonical, spec.model_dump(), how.method, result.settings, time.time()]
    key = hashlib.sha256(json.dumps(made).encode()).hexdigest()
    if model_id is not None:
        summary = {k: v for k, v in result.to_dict().items() if k != "per_question"}
        name = f"{spec.name}/{store.graph().node(model_id).name}"
        node = store.register_node(NodeKind.PROBE, name, key, attrs=summary)
        store.link(node.id, model_id, EdgeKind.PROBED)
        node_id = node.id
    row = {
        "probe_id": key[:16],
        "probe": spec.name,
        "method": how.method,
        "model": model_id or canonical,
        "target": result.target,
        "share": result.share,
        "low": result.low,
        "high": result.high,
        "trials": result.trials,
        "hits": result.hits,
        "counts": json.dumps(result.counts),
        "per_question": json.dumps(result.per_question),
        "settings": json.dumps(result.settings),
        "base_url": base_url,
        "lineage_node": node_id,
        "created_at": datetime.now(UTC),
    }
    write_deltalake(
        lake.probes,
        pa.Table.from_pylist([row], schema=PROBE_SCHEMA),
        mode="append",
        storage_options=lake.storage_options,
    )
    return result, node_id
