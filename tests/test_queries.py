"""Queries on hand-built graphs, above all at-risk on a 4-generation chain with mixed bases."""

from collections.abc import Callable

import pyarrow as pa
import pytest
from conftest import write_model
from deltalake import write_deltalake

from germline.lineage import LineageError, LineageGraph, LineageStore
from germline.storage import Lake


@pytest.fixture(scope="module")
def chain_store(tmp_path_factory: pytest.TempPathFactory) -> tuple[LineageStore, dict[str, str]]:
    """teacher -> student -> teacher -> student on base A, with base-B students beside it.

    A --derived_from--> T1 --generated_by--> D1 --trained_on--> S1 (A) --> T2 (A) --> D2 --> S2 (A)
                                               \\-> X1 (B) --> D3 --> Y (A)         \\-> X2 (B)
    T1 --derived_from--> C (A, a copy of the teacher, trained on nothing)
    """
    root = tmp_path_factory.mktemp("chain")
    store = LineageStore(Lake.resolve(root / "lake"))
    ids: dict[str, str] = {}

    def model(name: str, seed: int, parent: str | None = None) -> None:
        ids[name] = store.register_model(name, write_model(root / name, seed), parent=parent).id

    def data(name: str, teacher: str) -> None:
        uri = str(root / "tables" / name)
        write_deltalake(uri, pa.table({"completion": ["1, 2, 3"]}))
        ids[name] = store.register_dataset(name, uri, generated_by=[teacher]).id

    model("A", 0)
    model("B", 1)
    model("T1", 2, ids["A"])
    model("C", 3, ids["T1"])
    data("D1", ids["T1"])
    model("S1", 4, ids["A"])
    model("X1", 5, ids["B"])
    store.link(ids["S1"], ids["D1"], "trained_on")
    store.link(ids["X1"], ids["D1"], "trained_on")
    model("T2", 6, ids["S1"])
    data("D2", ids["T2"])
    model("S2", 7, ids["A"])
    model("X2", 8, ids["B"])
    store.link(ids["S2"], ids["D2"], "trained_on")
    store.link(ids["X2"], ids["D2"], "trained_on")
    data("D3", ids["X1"])
    model("Y", 9, ids["A"])
    store.link(ids["Y"], ids["D3"], "trained_on")
    return store, ids


@pytest.fixture
def chain(chain_store: tuple[LineageStore, dict[str, str]]) -> dict[str, str]:
    return chain_store[1]


@pytest.fixture
def graph(chain_store: tuple[LineageStore, dict[str, str]]) -> LineageGraph:
    return chain_store[0].graph()


def names(hits: list, ids: dict[str, str]) -> dict[str, int]:
    back = {v: k for k, v in ids.items()}
    return {back[h.id]: h.depth for h in hits}


def test_at_risk_follows_data_and_base(graph: LineageGraph, chain: dict[str, str]) -> None:
    g = graph
    at_risk = names(g.at_risk(chain["T1"]), chain)
    # Same base, trained on T1's data or on data of its students, any number of generations.
    assert at_risk == {"S1": 2, "T2": 3, "Y": 4, "S2": 5}
    # Cross-base students of the same data are descendants but not at risk.
    descendants = names(g.descendants(chain["T1"]), chain)
    assert {"X1", "X2", "C"} <= descendants.keys()
    assert not {"X1", "X2", "B"} & at_risk.keys()
    # A copy of the teacher (derived_from, no training data) is not a student of its data.
    assert "C" not in at_risk
    # From a second-generation teacher, only what came after it.
    assert names(g.at_risk(chain["T2"]), chain) == {"S2": 2}
    # From a cross-base model, its own base's students of its data.
    assert names(g.at_risk(chain["X1"]), chain) == {}


def test_at_risk_of_base_b(graph: LineageGraph, chain: dict[str, str]) -> None:
    # B's descendants through data: X1 -> D3 -> Y (base A: out); nothing of base B
    # trained on data descending from B.
    assert names(graph.at_risk(chain["B"]), chain) == {}


def test_ancestors_and_descendants_with_depths(graph: LineageGraph, chain: dict[str, str]) -> None:
    g = graph
    assert names(g.ancestors(chain["S2"]), chain) == {
        "A": 1,
        "D2": 1,
        "T2": 2,
        "S1": 3,
        "D1": 4,
        "T1": 5,
    }
    assert names(g.descendants(chain["S1"]), chain) == {"T2": 1, "D2": 2, "S2": 3, "X2": 3}
    assert g.ancestors(chain["A"]) == []


def test_fingerprints_inherit_down_the_chain(graph: LineageGraph, chain: dict[str, str]) -> None:
    g = graph
    fa, fb = g.fingerprint(chain["A"]), g.fingerprint(chain["B"])
    assert fa != fb
    assert {g.fingerprint(chain[n]) for n in ("T1", "C", "S1", "T2", "S2", "Y")} == {fa}
    assert {g.fingerprint(chain[n]) for n in ("X1", "X2")} == {fb}
    assert g.fingerprint(chain["D1"]) is None


def test_path_directed_and_undirected(graph: LineageGraph, chain: dict[str, str]) -> None:
    g = graph
    steps = g.path(chain["T1"], chain["S2"])
    assert [s.kind for s in steps] == [
        "generated_by",
        "trained_on",
        "derived_from",
        "generated_by",
        "trained_on",
    ]
    assert all(s.forward for s in steps)
    back = g.path(chain["S2"], chain["T1"])
    assert next(s.src for s in back) == chain["S2"] and not any(s.forward for s in back)
    # Two students of one dataset are related through it, against the flow once.
    siblings = g.path(chain["S1"], chain["X1"])
    assert [(s.src, s.dst, s.forward) for s in siblings] == [
        (chain["S1"], chain["D1"], False),
        (chain["D1"], chain["X1"], True),
    ]
    assert g.path(chain["A"], chain["A"]) == []


def test_no_path(store: LineageStore, model_dir: Callable) -> None:
    a = store.register_model("lonely-a", model_dir("la", 0))
    b = store.register_model("lonely-b", model_dir("lb", 1))
    with pytest.raises(LineageError, match="no lineage path"):
        store.graph().path(a.id, b.id)


def test_query_errors(graph: LineageGraph, chain: dict[str, str]) -> None:
    g = graph
    with pytest.raises(LineageError, match="unknown node id"):
        g.ancestors("model:nope@0")
    with pytest.raises(LineageError, match="needs a model"):
        g.at_risk(chain["D1"])


def test_resolve_by_name_prefix_and_id(graph: LineageGraph, chain: dict[str, str]) -> None:
    g = graph
    assert g.resolve("S1") == chain["S1"]
    assert g.resolve(chain["S1"][:-4]) == chain["S1"]
    assert g.resolve(chain["S1"]) == chain["S1"]
    with pytest.raises(LineageError, match="unknown node"):
        g.resolve("nothing-like-this")
    with pytest.raises(LineageError, match="ambiguous"):
        g.resolve("model:")


def test_two_kinds_on_one_pair_are_both_kept(store: LineageStore, delta_table: Callable) -> None:
    run = store.register_run("generate", key="k")
    data = store.register_dataset("d", delta_table("d"), generated_by=[run.id])
    store.link(data.id, run.id, "filtered_by")
    graph = store.graph()
    assert graph.parents(data.id) == [(run.id, "filtered_by,generated_by")]
    assert [s.kind for s in graph.path(run.id, data.id)] == ["filtered_by,generated_by"]
