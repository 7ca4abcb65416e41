"""OpenLineage run events for the lineage graph, so Marquez (or any OpenLineage backend) can
show germline's models and datasets beside the rest of an organisation's lineage.

Each run node becomes a COMPLETE RunEvent whose inputs are what the run used (and the other
parents of its outputs) and whose outputs are what it generated. A model or dataset derived
without a run node (registered by hand with parents) gets a synthetic run of its own, with a
deterministic run id, so every edge of the graph appears in some event. Models and datasets
are both OpenLineage datasets, named by where they live, and tagged with their germline id,
kind and base fingerprint.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import datetime
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from urllib.parse import urlparse

from openlineage.client.event_v2 import InputDataset, Job, OutputDataset, Run, RunEvent, RunState
from openlineage.client.facet_v2 import (
    dataset_version_dataset,
    job_type_job,
    tags_dataset,
    tags_run,
)
from openlineage.client.serde import Serde
from openlineage.client.uuid import generate_static_uuid

from germline.lineage.errors import LineageError
from germline.lineage.graph import LineageGraph
from germline.lineage.schema import EdgeKind, NodeKind

DEFAULT_NAMESPACE = "germline"


def _producer() -> str:
    try:
        return f"https://pypi.org/project/germline/{version('germline')}"
    except PackageNotFoundError:  # running from a source tree that is not installed
        return "https://pypi.org/project/germline/"


def _dataset_name(uri: str | None, node_id: str) -> tuple[str, str]:
    """(namespace, name) following OpenLineage's naming: scheme://authority and path."""
    if not uri:
        return DEFAULT_NAMESPACE, node_id
    parsed = urlparse(uri)
    if len(parsed.scheme) > 1:
        return f"{parsed.scheme}://{parsed.netloc}", parsed.path.lstrip("/") or node_id
    return "file", str(Path(uri))


class _Events:
    def __init__(self, graph: LineageGraph, namespace: str) -> None:
        self.graph = graph
        self.g = graph.g
        self.namespace = namespace
        self.producer = _producer()

    def _tags(self, node: str) -> list[tags_dataset.TagsDatasetFacetFields]:
        data = self.g.nodes[node]
        tags = {"germline.id": node, "germline.kind": data["kind"], "germline.name": data["name"]}
        fingerprint = self.graph.fingerprint(node)
        if fingerprint:
            tags["germline.base_fingerprint"] = fingerprint
        return [tags_dataset.TagsDatasetFacetFields(k, v, "germline") for k, v in tags.items()]

    def _facets(self, node: str) -> dict:
        facets: dict = {"tags": tags_dataset.TagsDatasetFacet(tags=self._tags(node))}
        if self.g.nodes[node]["version"] is not None:
            facets["version"] = dataset_version_dataset.DatasetVersionDatasetFacet(
                datasetVersion=str(self.g.nodes[node]["version"])
            )
        return facets

    def _input(self, node: str) -> InputDataset:
        ns, name = _dataset_name(self.g.nodes[node]["uri"], node)
        return InputDataset(namespace=ns, name=name, facets=self._facets(node))

    def _output(self, node: str) -> OutputDataset:
        ns, name = _dataset_name(self.g.nodes[node]["uri"], node)
        return OutputDataset(namespace=ns, name=name, facets=self._facets(node))

    def _event(
        self,
        run_key: str,
        when: datetime,
        job: str,
        job_type: str,
        inputs: list[str],
        outputs: list[str],
        tags: dict[str, str],
    ) -> RunEvent:
        run_facets = {
            "tags": tags_run.TagsRunFacet(
                tags=[tags_run.TagsRunFacetFields(k, v, "germline") for k, v in tags.items()]
            )
        }
        job_facets = {
            "jobType": job_type_job.JobTypeJobFacet(
                processingType="BATCH", integration="GERMLINE", jobType=job_type
            )
        }
        return RunEvent(
            eventType=RunState.COMPLETE,
            eventTime=when.isoformat(),
            run=Run(runId=str(generate_static_uuid(when, run_key.encode())), facets=run_facets),
            job=Job(namespace=self.namespace, name=job, facets=job_facets),
            inputs=[self._input(n) for n in sorted(set(inputs))],
            outputs=[self._output(n) for n in sorted(set(outputs))],
            producer=self.producer,
        )

    def events(self) -> Iterator[RunEvent]:
        run_kind, generated = NodeKind.RUN.value, EdgeKind.GENERATED_BY.value
        covered: set[str] = set()
        for node, kind in self.g.nodes(data="kind"):
            if kind != run_kind:
                continue
            outputs = [c for c, d in self.g.succ[node].items() if d["kind"] == generated]
            inputs = list(self.g.pred[node])
            for out in outputs:
                inputs += [
                    p for p in self.g.pred[out] if p != node and self.g.nodes[p]["kind"] != run_kind
                ]
            covered.update(outputs)
            data = self.g.nodes[node]
            yield self._event(
                node,
                data["created_at"],
                data["name"],
                "RUN",
                inputs,
                outputs,
                {"germline.id": node, "germline.attrs": data["attrs"] or "{}"},
            )
        for node, kind in self.g.nodes(data="kind"):
            if kind == run_kind or node in covered or not self.g.pred[node]:
                continue
            data = self.g.nodes[node]
            yield self._event(
                f"derive:{node}",
                data["created_at"],
                f"{kind}.{data['name']}",
                "REGISTER",
                list(self.g.pred[node]),
                [node],
                {"germline.id": node},
            )


def openlineage_events(graph: LineageGraph, namespace: str = DEFAULT_NAMESPACE) -> list[RunEvent]:
    """One COMPLETE RunEvent per run (real or synthetic), in time order."""
    return sorted(_Events(graph, namespace).events(), key=lambda e: e.eventTime)


def write_openlineage(
    graph: LineageGraph, out: str | Path, namespace: str = DEFAULT_NAMESPACE
) -> int:
    """Write the events as JSON lines; returns how many."""
    events = openlineage_events(graph, namespace)
    try:
        with Path(out).open("w") as fh:
            for event in events:
                fh.write(Serde.to_json(event) + "\n")
    except OSError as exc:  # a folder, a missing parent, no permission: the user's to fix
        raise LineageError(f"cannot write {out}: {exc.strerror or exc}") from None
    return len(events)
