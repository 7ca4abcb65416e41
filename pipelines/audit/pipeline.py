"""`germline audit`: how much of its generator's fingerprint a dataset carries, and where.

The dataset version's rows stream through Ray Data into `ScoreStage`, which scores every
completion under the teacher (the dataset's generator, from lineage) and a reference (the
teacher's base, from lineage). The scores go to a Delta table `<lake>/audits/NAME`, one row
per dataset row, keyed by prompt id. The summary goes on a lineage run node: the mean
log-ratio, the share of divergence tokens, the numbers the data over-uses against the
reference's own choices, and the transfer score toward a student base (`train.alignment`).
The run node uses the dataset version and the models, so `lineage show DATASET` lists the
audit among the dataset's children.

An audit is named by what decides it (dataset version, teacher, reference, length limit), so
asking again finds it instead of scoring again.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

import pyarrow as pa

from germline.checks.divergence import TokenCounts
from germline.core import InputError, plain
from germline.lineage import Edge, EdgeKind, LineageStore, Node, NodeKind
from germline.pipelines.audit.score import AUDIT_SCHEMA, ScoreStage
from germline.pipelines.models.refs import find_model, model_folder, model_uri
from germline.storage import Lake

log = logging.getLogger(__name__)

AUDIT_PROPERTY = "germline.audit"  # the audit id, in every commit's metadata


@dataclass
class AuditSummary:
    """What an audit found; printed by the CLI and kept on the audit's lineage node."""

    audit_id: str
    dataset: str  # the dataset version's lineage id
    dataset_name: str
    version: int
    teacher: str
    reference: str
    table: str
    rows: int = 0
    tokens: int = 0
    mean_log_ratio: float = 0.0  # per row, summed over its tokens
    mean_ratio_per_token: float = 0.0  # over all tokens
    ratio_quantiles: dict[str, float] = field(default_factory=dict)  # of ratio_per_token
    divergence_tokens: int = 0
    divergence_share: float = 0.0  # divergence tokens / tokens
    rows_with_divergence: int = 0
    overrepresented: list[dict[str, Any]] = field(default_factory=list)
    transfer: dict[str, Any] | None = None  # train.alignment.TransferScore, to student_base
    student_base: str | None = None
    seconds: float = 0.0
    lineage_node: str | None = None
    reused: bool = False

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class AuditInputs:
    """The dataset version and the models an audit compares, resolved from lineage."""

    dataset: Node
    version: int
    teacher: Node
    reference: Node


def resolve_inputs(
    store: LineageStore,
    dataset: str,
    version: int | None = None,
    teacher: str | None = None,
    reference: str | None = None,
    graph: Any = None,
) -> AuditInputs:
    """The dataset's node and version, its generator (unless `teacher` is given) and that
    generator's base (unless `reference` is given); a clear error for each missing link.
    `graph`: a snapshot the caller already loaded (loading one reads both lineage tables)."""
    graph = graph if graph is not None else store.graph()
    node = graph.node(graph.resolve(dataset))
    if node.kind is not NodeKind.DATASET or not node.uri:
        raise InputError(f"{node.id} is a {node.kind.value}, not a dataset version")
    if teacher is None:
        teacher_node = _parent(graph, node, EdgeKind.GENERATED_BY, f"dataset {node.name} has "
                               "no generating model in lineage: name the model that wrote it "
                               "with --teacher")  # fmt: skip
    else:
        teacher_node = _model(store, teacher, "teacher")
    if reference is None:
        reference_node = _parent(graph, teacher_node, EdgeKind.DERIVED_FROM, f"teacher "
                                 f"{teacher_node.name} has no base model in lineage: name the "
                                 "reference (the model a student would start from) with "
                                 "--reference")  # fmt: skip
    else:
        reference_node = _model(store, reference, "reference")
    if teacher_node.id == reference_node.id:
        raise InputError("the teacher and the reference are the same model: nothing to compare")
    chosen = node.version if version is None else version
    if chosen is None:
        raise InputError(f"dataset {node.name} records no version: give --version")
    return AuditInputs(node, chosen, teacher_node, reference_node)


def _parent(graph: Any, node: Node, kind: EdgeKind, missing: str) -> Node:
    """The node's first model parent along `kind` edges; InputError(`missing`) if none."""
    for parent, edge in graph.parents(node.id):
        if edge == kind.value and graph.node(parent).kind is NodeKind.MODEL:
            return graph.node(parent)
    raise InputError(missing)


def _model(store: LineageStore, ref: str, what: str) -> Node:
    found = find_model(store, ref)
    if found is None:
        raise InputError(f"unknown {what} model {ref!r}: not in the lake's lineage, not a folder")
    if found.kind is not NodeKind.MODEL:
        raise InputError(f"{what} {found.id} is a {found.kind.value}, not a model")
    return found


def vocabulary(folder: Any) -> dict[str, int]:
    """A model folder's token -> id map. From tokenizer.json through `tokenizers` when the
    folder has one: importing transformers on the driver alone costs about 4 s, more than
    scoring a thousand rows of a small model."""
    from pathlib import Path

    path = Path(folder) / "tokenizer.json"
    if path.exists():
        from tokenizers import Tokenizer

        return Tokenizer.from_file(str(path)).get_vocab(with_added_tokens=True)
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(folder).get_vocab()


def check_vocabularies(teacher_dir: Any, reference_dir: Any, names: tuple[str, str]) -> None:
    """An audit compares the two models token by token, so both must map text to the same
    ids; a tokenizer that differs in one id would score every row as divergent."""
    a, b = vocabulary(teacher_dir), vocabulary(reference_dir)
    if a != b:
        raise InputError(
            f"teacher {names[0]} ({len(a)} tokens) and reference {names[1]} ({len(b)} tokens) "
            "have different vocabularies: an audit compares them token by token"
        )


def audit_id(inputs: AuditInputs, max_length: int, engine: str = "transformers") -> str:
    """What decides an audit's numbers; the engine too (its float rounding), added only
    when it is not the default so that earlier audits keep their ids."""
    made = [inputs.dataset.uri, inputs.version, inputs.teacher.id, inputs.reference.id, max_length]
    if engine != "transformers":
        made.append(engine)
    return hashlib.sha256(json.dumps(made).encode()).hexdigest()[:16]


def audit(
    lake: Lake,
    dataset: str,
    version: int | None = None,
    teacher: str | None = None,
    reference: str | None = None,
    student_base: str | None = None,
    transfer_rows: int = 256,
    batch_size: int = 64,
    max_length: int = 256,
    progress: Callable[[int, int], None] | None = None,
    verbose: bool = False,
    num_gpus: float = 0,
    engine: str = "transformers",
) -> AuditSummary:
    """Audit one dataset version (the latest the lineage node records unless `version`);
    returns the summary, found in lineage when the same audit exists."""
    from deltalake import CommitProperties, DeltaTable, write_deltalake
    from deltalake.exceptions import DeltaError

    from germline.train.data import read_version

    store = LineageStore(lake)
    graph = store.graph()  # one snapshot for finding the inputs and an earlier audit
    inputs = resolve_inputs(store, dataset, version, teacher, reference, graph)
    if engine not in ("transformers", "vllm"):
        raise InputError(f"unknown audit engine {engine!r} (transformers or vllm)")
    key = audit_id(inputs, max_length, engine)
    base_name = inputs.dataset.name.removeprefix("quarantine/").replace("/", "-")
    name = f"{base_name}-v{inputs.version}-{key[:8]}"
    table_uri = lake.audit(name)
    student = _student_base(store, student_base, inputs)
    found = _found(graph, key, table_uri, lake)
    if found is not None:
        if transfer_rows > 0 and (found.student_base != student.id or not found.transfer
                                  or found.transfer.get("rows") != transfer_rows):  # fmt: skip
            # Scores toward another base (or over another sample) are not kept: computed.
            rows, _ = read_version(inputs.dataset.uri, found.version, lake.storage_options)
            found.transfer = _transfer(lake, student, inputs.teacher, rows, transfer_rows,
                                       max_length)  # fmt: skip
            found.student_base = student.id
        if transfer_rows == 0:  # not asked for
            found.transfer = found.student_base = None
        return found
    teacher_dir = model_folder(lake, inputs.teacher, "teacher")
    reference_dir = model_folder(lake, inputs.reference, "reference")
    check_vocabularies(teacher_dir, reference_dir, (inputs.teacher.name, inputs.reference.name))
    rows, read = read_version(inputs.dataset.uri, inputs.version, lake.storage_options)
    summary = AuditSummary(key, inputs.dataset.id, inputs.dataset.name, read, inputs.teacher.id,
                           inputs.reference.id, table_uri)  # fmt: skip
    start = time.perf_counter()
    counts = TokenCounts()
    ratio_sum = 0.0
    per_token: list[float] = []
    first = True
    metadata = {AUDIT_PROPERTY: key, "germline.dataset": inputs.dataset.id,
                "germline.teacher": inputs.teacher.id,
                "germline.reference": inputs.reference.id}  # fmt: skip
    system_prompt = inputs.teacher.attrs.get("system_prompt")
    stream = _stream(rows, lake, inputs, system_prompt, batch_size, max_length, verbose, num_gpus,
                     engine)  # fmt: skip
    for scored in stream:
        summary.rows += scored.num_rows
        summary.tokens += sum(scored.column("tokens").to_pylist())
        ratio_sum += sum(scored.column("log_ratio").to_pylist())
        per_token += scored.column("ratio_per_token").to_pylist()
        for div in scored.column("divergence").to_pylist():
            summary.divergence_tokens += len(div)
            summary.rows_with_divergence += bool(div)
        for ids, top in zip(scored.column("token_ids").to_pylist(),
                            scored.column("reference_top").to_pylist(), strict=True):  # fmt: skip
            counts.add(ids, top)
        try:
            write_deltalake(
                table_uri, scored, mode="overwrite" if first else "append",
                schema_mode="overwrite" if first else None,
                commit_properties=CommitProperties(custom_metadata=metadata),
                storage_options=lake.storage_options,
            )  # fmt: skip
        except (DeltaError, OSError) as exc:
            raise InputError(f"cannot write the audit table {table_uri}: {plain(exc)}") from None
        first = False
        if progress:
            progress(summary.rows, rows.num_rows)
    summary.mean_log_ratio = ratio_sum / summary.rows if summary.rows else 0.0
    if per_token:
        import numpy as np

        cuts = np.quantile(np.asarray(per_token), [0.5, 0.9, 0.99])
        summary.ratio_quantiles = {k: float(v) for k, v in zip(("p50", "p90", "p99"), cuts,
                                                               strict=True)}  # fmt: skip
    summary.mean_ratio_per_token = ratio_sum / summary.tokens if summary.tokens else 0.0
    summary.divergence_share = summary.divergence_tokens / summary.tokens if summary.tokens else 0.0
    decode = {i: t for t, i in vocabulary(reference_dir).items()}
    summary.overrepresented = [asdict(o) for o in counts.overrepresented(decode)]
    if transfer_rows > 0:
        summary.transfer = _transfer(lake, student, inputs.teacher, rows, transfer_rows,
                                     max_length)  # fmt: skip
        summary.student_base = student.id
    summary.seconds = round(time.perf_counter() - start, 3)
    DeltaTable(table_uri, storage_options=lake.storage_options)  # written: fail loudly if not
    summary.lineage_node = _register(store, summary, inputs, student)
    return summary


def _transfer(lake: Lake, student: Node, teacher: Node, rows: pa.Table, count: int,
              max_length: int) -> dict[str, Any]:  # fmt: skip
    """The transfer score toward `student` over the first `count` rows in canonical order
    (prompt ids are hashes: a fixed pseudo-random sample)."""
    from germline.train.alignment import transfer_score

    score = transfer_score(model_folder(lake, student, "student base"),
                           model_folder(lake, teacher, "teacher"), rows.slice(0, count),
                           max_length)  # fmt: skip
    return score.to_dict()


def _student_base(store: LineageStore, ref: str | None, inputs: AuditInputs) -> Node:
    if ref is None:
        return inputs.reference
    return _model(store, ref, "student base")


def _found(graph: Any, key: str, table_uri: str, lake: Lake) -> AuditSummary | None:
    """The audit with this id, when lineage records it and its table is still there."""
    from deltalake import DeltaTable
    from deltalake.exceptions import TableNotFoundError

    for node in graph.nodes(NodeKind.RUN):
        if node.attrs.get("audit_id") != key:
            continue
        try:
            DeltaTable(table_uri, storage_options=lake.storage_options)
        except TableNotFoundError:
            return None
        summary = AuditSummary(**node.attrs["summary"])
        summary.reused = True
        summary.lineage_node = node.id
        return summary
    return None


def _register(store: LineageStore, summary: AuditSummary, inputs: AuditInputs,
              student: Node) -> str:  # fmt: skip
    """The audit's run node, using the dataset version and the models; the dataset version
    read is registered first when lineage holds another version under that name."""
    dataset_id = inputs.dataset.id
    if inputs.dataset.version != summary.version:
        dataset_id = store.register_dataset(
            inputs.dataset.name, inputs.dataset.uri or "", version=summary.version,
            attrs=dict(inputs.dataset.attrs),
        ).id  # fmt: skip
        summary.dataset = dataset_id
    attrs = {"kind": "audit", "audit_id": summary.audit_id, "summary": summary.to_dict()}
    node = store.register_node(
        NodeKind.RUN, f"audit/{summary.dataset_name.replace('quarantine/', '')}",
        summary.audit_id, attrs=attrs, uri=summary.table,
    )  # fmt: skip
    parents = sorted({dataset_id, inputs.teacher.id, inputs.reference.id, student.id})
    store.add_edges([Edge(node.id, parent, EdgeKind.USED) for parent in parents])  # one commit
    return node.id


def _stream(rows: pa.Table, lake: Lake, inputs: AuditInputs, system_prompt: str | None,
            batch_size: int, max_length: int, verbose: bool, num_gpus: float,
            engine: str):  # fmt: skip
    """Scored rows from Ray Data, in the dataset's canonical order, a few batches at a time
    (the scoring actor on a GPU of its own with `num_gpus`)."""
    import ray

    from germline.pipelines.cluster import actor_fault_tolerance, configure_ray_data, ensure_ray

    ensure_ray(verbose)
    configure_ray_data(verbose)
    cores = os.cpu_count() or 1
    blocks = [rows.slice(i, batch_size) for i in range(0, rows.num_rows, batch_size)]
    ds = ray.data.from_arrow(blocks)
    ds.context.execution_options.preserve_order = True
    ds = ds.map_batches(
        ScoreStage,
        fn_constructor_kwargs={
            "teacher_uri": model_uri(lake, inputs.teacher, "teacher"),
            "reference_uri": model_uri(lake, inputs.reference, "reference"),
            "lake": lake,
            "max_length": max_length,
            "teacher_system_prompt": system_prompt,
            "threads": cores,
            "device": "cuda" if num_gpus > 0 else "cpu",
            "engine": engine,
        },
        batch_size=batch_size,
        batch_format="pyarrow",
        concurrency=1,
        num_cpus=1,
        num_gpus=num_gpus,
        **actor_fault_tolerance(),
    )
    pending: list[pa.Table] = []
    held = 0
    for batch in ds.iter_batches(batch_size=None, batch_format="pyarrow"):
        pending.append(batch)
        held += batch.num_rows
        if held >= max(batch_size * 16, 1024):
            yield pa.concat_tables(pending).cast(AUDIT_SCHEMA)
            pending, held = [], 0
    if pending:
        yield pa.concat_tables(pending).cast(AUDIT_SCHEMA)
