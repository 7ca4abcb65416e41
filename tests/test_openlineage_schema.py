"""`germline lineage export --openlineage` checked against the OpenLineage spec itself.

Every event validates against the spec's JSON schema (`OpenLineage.json`, 2-0-2), and every
facet in it against the facet schema its `_schemaURL` names, all shipped in tests/data so no
network is needed. The lake is the one `germline demo` builds: real and synthetic runs, model
and dataset nodes, dataset versions, so every event and facet kind germline emits is there.
"""

from __future__ import annotations

import json
from datetime import datetime
from pathlib import Path

import pytest
from conftest import germline
from jsonschema import Draft202012Validator
from referencing import Registry
from referencing.jsonschema import DRAFT202012

from germline.storage import Lake

SPEC = Path(__file__).parent / "data" / "openlineage"


def _registry() -> Registry:
    resources = []
    for file in SPEC.glob("*.json"):
        schema = json.loads(file.read_text())
        resources.append((schema["$id"], DRAFT202012.create_resource(schema)))
    return Registry().with_resources(resources)


@pytest.fixture(scope="module")
def events(tmp_path_factory: pytest.TempPathFactory) -> list[dict]:
    lake = Lake.resolve(tmp_path_factory.mktemp("ol") / "lake")
    germline("demo", lake=lake, check=True)
    out = Path(lake.root).parent / "events.jsonl"
    germline("lineage", "export", "--openlineage", str(out), lake=lake, check=True)
    return [json.loads(line) for line in out.read_text().splitlines()]


def _facets(event: dict) -> list[tuple[str, dict]]:
    """(where, facet) for every facet of the event."""
    found = [(f"run.{k}", f) for k, f in event["run"].get("facets", {}).items()]
    found += [(f"job.{k}", f) for k, f in event["job"].get("facets", {}).items()]
    for side in ("inputs", "outputs"):
        for d in event.get(side, []):
            found += [(f"{side}.{d['name']}.{k}", f) for k, f in d.get("facets", {}).items()]
    return found


def test_every_event_is_a_run_event_of_the_spec(events: list[dict]) -> None:
    registry = _registry()
    spec = registry["https://openlineage.io/spec/2-0-2/OpenLineage.json"].contents
    validator = Draft202012Validator(spec, registry=registry)
    assert len(events) >= 5
    for event in events:
        errors = sorted(validator.iter_errors(event), key=str)
        assert not errors, f"{event['job']['name']}: {errors[0].message}"
        assert event["schemaURL"].startswith(spec["$id"])  # the version it was checked against
        datetime.fromisoformat(event["eventTime"])  # "date-time"


def test_every_facet_matches_the_schema_it_names(events: list[dict]) -> None:
    registry = _registry()
    kinds = set()
    for event in events:
        for where, facet in _facets(event):
            url = facet["_schemaURL"]  # e.g. .../TagsDatasetFacet.json#/$defs/TagsDatasetFacet
            assert url.split("#")[0] in registry, f"{where}: no schema {url}"
            # a reference to the named definition, resolved inside its own document
            validator = Draft202012Validator({"$ref": url}, registry=registry)
            errors = list(validator.iter_errors(facet))
            assert not errors, f"{where}: {errors[0].message}"
            kinds.add(url.rsplit("/", 1)[-1])
    # every facet kind germline writes was seen, so none is unchecked
    assert kinds == {"TagsDatasetFacet", "DatasetVersionDatasetFacet", "TagsRunFacet",
                     "JobTypeJobFacet"}  # fmt: skip
