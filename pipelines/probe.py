"""`germline probe`: run a trait probe against a served model, keep the result in the lake.

Every result is a row of `<lake>/probes` (a Delta table: the share, its interval, the counts,
the per-question shares and the settings) and, when the model is in the lake's lineage, a
`probe` node with a `probed` edge to it, so lineage answers "what was this student measured
at, and how".

An experiment's probe of a lineage model also keeps its `request`: a digest of what decides
the result (the model's lineage id, which covers its weights; the probe's questions,
candidates and target; how it is scored; what serves it). A rerun finds the results it
already has by that digest (`stored_results`) and serves and probes only the rest, so a
finished step costs a table read.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict
from datetime import UTC, datetime
from typing import Any

import pyarrow as pa
from deltalake import DeltaTable, write_deltalake
from deltalake.exceptions import TableNotFoundError

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
        ("request", pa.string()),  # what decides the result (request_key); null for others
    ]
)


def request_key(model_id: str, spec: ProbeSpec, how: ProbeSettings,
                served_by: Mapping[str, Any]) -> str:  # fmt: skip
    """The digest of everything that decides a probe's result: the model's lineage id (which
    covers its weights), the probe (questions, candidates, target, system prompt), how it is
    scored, and what served it (engine and its options: another engine's floats differ)."""
    made = [model_id, spec.model_dump(mode="json"), asdict(how), dict(served_by)]
    return hashlib.sha256(json.dumps(made, sort_keys=True).encode()).hexdigest()


def stored_results(lake: Lake, requests: Sequence[str]) -> dict[str, ProbeResult]:
    """The lake's results for these request keys (the latest of each), rebuilt as they were
    measured; keys never probed, and tables from before keys were kept, give nothing."""
    try:
        table = DeltaTable(lake.probes, storage_options=lake.storage_options)
    except TableNotFoundError:
        return {}
    if "request" not in table.schema().to_arrow().names:
        return {}
    rows = table.to_pyarrow_table(filters=[("request", "in", sorted(set(requests)))])
    found: dict[str, ProbeResult] = {}
    for row in sorted(rows.to_pylist(), key=lambda r: r["created_at"]):  # the latest wins
        found[row["request"]] = ProbeResult(
            probe=row["probe"], method=row["method"], model=row["model"], target=row["target"],
            share=row["share"], low=row["low"], high=row["high"], trials=row["trials"],
            hits=row["hits"], counts=json.loads(row["counts"]),
            per_question=json.loads(row["per_question"]), settings=json.loads(row["settings"]),
        )  # fmt: skip
    return found


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
    return probe_models(lake, client, base_url, [(model, spec)], how)[0]


def probe_models(
    lake: Lake,
    client: Any,
    base_url: str,
    jobs: Sequence[tuple[str, ProbeSpec]],
    how: ProbeSettings,
    parallel: int = 3,
    requests: Sequence[str | None] | None = None,
) -> list[tuple[ProbeResult, str | None]]:
    """Probe every (model, spec) pair, `parallel` models at a time, and store the results in
    the order given (each with its request key, when given: see `request_key`). A probe's
    requests are small and its time goes to the server's per-request overhead, so one model
    at a time leaves the server's CPUs partly idle; the stores stay sequential (one writer of
    the probes table and of lineage)."""

    def measure(job: tuple[str, ProbeSpec]) -> tuple[str, ProbeResult]:
        model, spec = job
        try:
            canonical = client.models.retrieve(model).id
        except Exception as exc:  # the server's own 404 or connection error, said plainly
            raise InputError(f"cannot reach model {model!r} at {base_url}: {exc}") from None
        return canonical, run_probe(client, canonical, spec, how)

    done = []
    store = LineageStore(lake)  # one store for every result: it keeps the tables' snapshot
    with ThreadPoolExecutor(max(1, min(parallel, len(jobs)))) as pool:
        # in order, each stored as soon as it and those before it are measured: a model that
        # fails costs only its own result
        keys = requests if requests is not None else [None] * len(jobs)
        measured = zip(pool.map(measure, jobs), jobs, keys, strict=True)
        for (canonical, result), (_, spec), key in measured:
            done.append((result, _record(store, base_url, canonical, spec, how, result, key)))
    return done


def _record(
    store: LineageStore, base_url: str, canonical: str, spec: ProbeSpec, how: ProbeSettings,
    result: ProbeResult, request: str | None = None,
) -> str | None:  # fmt: skip
    """Append the result to the probes table and, for a model in lineage, add its probe node."""
    lake = store.lake
    node_id = None
    graph = store.graph()
    try:
        model_id = graph.resolve(canonical)
    except UnknownNode:  # a model of another server: stored, not linked
        model_id = None
    made = [canonical, spec.model_dump(), how.method, result.settings, time.time()]
    key = hashlib.sha256(json.dumps(made).encode()).hexdigest()
    if model_id is not None:
        summary = {k: v for k, v in result.to_dict().items() if k != "per_question"}
        name = f"{spec.name}/{graph.node(model_id).name}"
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
        "request": request,
    }
    write_deltalake(
        lake.probes,
        pa.Table.from_pylist([row], schema=PROBE_SCHEMA),
        mode="append",
        schema_mode="merge",  # a table from before `request` gains the column
        storage_options=lake.storage_options,
    )
    return node_id
