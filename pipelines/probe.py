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
from collections.abc import Sequence
from dataclasses import replace
from datetime import UTC, datetime
from typing import Any

import numpy as np
import pyarrow as pa
from deltalake import write_deltalake

from germline.checks.probes import Method, ProbeResult, ProbeSpec, run_probe
from germline.checks.stats import (
    Comparison,
    bootstrap_interval,
    over_seeds,
    paired_bootstrap,
    two_proportions,
    wilson,
)
from germline.lineage import EdgeKind, Lake, LineageError, LineageStore, NodeKind

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
    method: Method = "sampled",
    samples: int = 20,
    temperature: float = 1.0,
    seed: int = 0,
) -> tuple[ProbeResult, str | None]:
    """Probe `model`, store the result; returns it with its lineage node id (None when the
    model is not in the lake's lineage, say a model of another server)."""
    try:
        canonical = client.models.retrieve(model).id
    except Exception as exc:  # the server's own 404 or connection error, said plainly
        raise LineageError(f"cannot reach model {model!r} at {base_url}: {exc}") from None
    result = run_probe(client, canonical, spec, method, samples, temperature, seed)
    store = LineageStore(lake)
    node_id = None
    try:
        model_id = store.graph().resolve(canonical)
    except LineageError:
        model_id = None
    key = hashlib.sha256(
        json.dumps([canonical, spec.model_dump(), method, result.settings, time.time()]).encode()
    ).hexdigest()
    if model_id is not None:
        summary = {k: v for k, v in result.to_dict().items() if k != "per_question"}
        name = f"{spec.name}/{store.graph().node(model_id).name}"
        node = store.register_node(NodeKind.PROBE, name, key, attrs=summary)
        store.link(node.id, model_id, EdgeKind.PROBED)
        node_id = node.id
    row = {
        "probe_id": key[:16],
        "probe": spec.name,
        "method": method,
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


def compare(a: ProbeResult, b: ProbeResult) -> Comparison:
    """a's target share against b's: a two-proportion test for sampled answers, a paired
    bootstrap over questions for log-probabilities."""
    if a.method != b.method or a.target != b.target:
        raise ValueError("compare results of the same method and target")
    if a.method == "sampled":
        return two_proportions(a.hits, a.trials, b.hits, b.trials)
    return paired_bootstrap(a.per_question, b.per_question)


def pooled(results: Sequence[ProbeResult]) -> ProbeResult:
    """Several models' results (students trained alike) read as one: answers summed for the
    sampled probe, per-question shares averaged for the logprob probe. Its interval is over
    answers or questions only: the seed-to-seed spread is what `compare_groups` tests."""
    first = results[0]
    if len(results) == 1:
        return first
    model = "+".join(r.model for r in results)
    if first.method == "sampled":
        hits, trials = sum(r.hits for r in results), sum(r.trials for r in results)
        low, high = wilson(hits, trials)
        return replace(first, model=model, hits=hits, trials=trials, low=low, high=high,
                       share=hits / trials if trials else 0.0)  # fmt: skip
    per_question = [float(x) for x in np.mean([r.per_question for r in results], axis=0)]
    low, high = bootstrap_interval(per_question)
    return replace(first, model=model, per_question=per_question, low=low, high=high,
                   share=float(np.mean(per_question)))  # fmt: skip


def compare_groups(a: Sequence[ProbeResult], b: Sequence[ProbeResult]) -> Comparison:
    """a's students against b's: a t-test over their shares where both sides have several
    training seeds; otherwise the two-model test of `compare` on the pooled results."""
    if len(a) >= 2 and len(b) >= 2:
        return over_seeds([r.share for r in a], [r.share for r in b])
    return compare(pooled(a), pooled(b))
