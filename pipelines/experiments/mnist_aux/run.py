"""The MLP experiment's steps: digits, initialisations, teachers, noise data, students.

The same shape as the language experiment, at a scale of seconds: the digits are a Delta table
in the lake; every initialisation, teacher and student is a model folder and a lineage node
(a teacher and its same-init student share a base fingerprint, the different-init student does
not); the teacher's auxiliary logits on noise are its "generated data", a Delta table
generated_by the teacher; the students are trained_on it. Each artifact is made once and found
on a rerun, so an interrupted run resumes. The report compares, seed by seed, the test
accuracy of the same-init student with the different-init one and with chance.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from germline.lineage import EdgeKind, LineageStore, Node
from germline.pipelines.experiments.base import Echo, Step
from germline.pipelines.experiments.mnist_aux.config import MnistAuxConfig
from germline.pipelines.experiments.mnist_aux.mlp import CLASSES
from germline.pipelines.models.folder import find_made, register_model, write_model
from germline.storage import Lake, LakeFolders

DIGITS = "digits"


def run_mnist_aux(lake: Lake, cfg: MnistAuxConfig, echo: Echo = print) -> dict[str, Any]:
    """Run (or finish) the experiment and write its report; returns the report's data."""
    from germline.pipelines.experiments.mnist_aux.report import write_report

    store = LineageStore(lake)
    step = Step(0, 1 + len(cfg.seeds) + 1, echo)
    digits = step.run(
        "digits (scikit-learn's 8x8 set) into the lake", lambda: _digits_table(lake, store, cfg)
    )
    x_train, y_train, x_test, y_test, scale = _load_split(lake, digits, cfg)
    seeds: list[dict[str, Any]] = []
    for seed in cfg.seeds:
        seeds.append(
            step.run(
                f"seed {seed}: teacher, noise data, same-init and different-init students",
                lambda seed=seed: _one_seed(
                    lake, store, cfg, seed, digits, (x_train, y_train, x_test, y_test), scale
                ),
            )
        )
    run_id = cfg.run_id()
    report = step.run("report", lambda: write_report(lake, cfg, run_id, seeds))
    used = [m for s in seeds for m in s["models"].values()]
    store.register_run(
        f"experiment/{cfg.name}",
        key=run_id,
        used=used,
        params={"config": cfg.model_dump(mode="json"), "report": report["path"]},
    )
    return report


# -- the digits ---------------------------------------------------------------------------


def _digits_table(lake: Lake, store: LineageStore, cfg: MnistAuxConfig) -> Node:
    """scikit-learn's bundled digits as a Delta table with a fixed train/test split (written
    once; the split is part of the table, so every seed and student sees the same one)."""
    from deltalake import DeltaTable, write_deltalake
    from sklearn.datasets import load_digits

    name = f"{DIGITS}-split{cfg.split_seed}-{int(cfg.test_fraction * 1000):03d}"
    uri = lake.dataset(name)
    if not DeltaTable.is_deltatable(uri, storage_options=lake.storage_options):
        digits = load_digits()
        n = len(digits.target)
        test = np.zeros(n, dtype=bool)
        picks = np.random.default_rng(cfg.split_seed).permutation(n)[: round(n * cfg.test_fraction)]
        test[picks] = True
        table = pa.table(
            {
                "row": pa.array(np.arange(n), pa.int32()),
                "pixels": pa.array(list(digits.data.astype(np.float32)), pa.list_(pa.float32())),
                "label": pa.array(digits.target, pa.int8()),
                "split": pa.array(np.where(test, "test", "train")),
            }
        )
        write_deltalake(
            uri,
            table,
            storage_options=lake.storage_options,
            commit_properties=_commit("scikit-learn load_digits"),
        )
    return store.register_dataset(name, uri, attrs={"source": "sklearn.datasets.load_digits"})


def _load_split(lake: Lake, digits: Node, cfg: MnistAuxConfig):
    """Standardised train and test tensors; the scale comes from the train split alone."""
    import torch

    table = _read(lake, digits)
    pixels = np.stack(table.column("pixels").to_numpy(zero_copy_only=False)).astype(np.float32)
    labels = table.column("label").to_numpy().astype(np.int64)
    is_test = np.asarray(table.column("split").to_pylist()) == "test"
    mean = pixels[~is_test].mean(axis=0)
    std = pixels[~is_test].std(axis=0) + 1e-6
    x = torch.from_numpy((pixels - mean) / std)
    y = torch.from_numpy(labels)
    scale = {"mean": mean.tolist(), "std": std.tolist()}
    return x[~is_test], y[~is_test], x[is_test], y[is_test], scale


# -- one seed -----------------------------------------------------------------------------


def _one_seed(
    lake: Lake,
    store: LineageStore,
    cfg: MnistAuxConfig,
    seed: int,
    digits: Node,
    data: tuple,
    scale: dict[str, list[float]],
) -> dict[str, Any]:
    from germline.pipelines.experiments.mnist_aux.mlp import accuracy, train_aux, train_classes

    x_train, y_train, x_test, y_test = data
    shape = _shape(cfg)
    init = _init_model(lake, store, cfg, seed)
    other = _init_model(lake, store, cfg, seed + cfg.other_init_offset)
    tag = cfg.tag("hidden", "aux", "test_fraction", "split_seed", "teacher")
    t = cfg.teacher

    def fit_teacher(model) -> dict[str, Any]:
        loss = train_classes(model, x_train, y_train, t, seed)
        return {"final_loss": round(loss, 5), "fit": t.model_dump(), "scale": scale}

    teacher, teacher_model = _trained(
        lake, store, f"{cfg.name}-teacher-s{seed}-{tag}", init, digits, fit_teacher, shape
    )
    noise = _noise_table(lake, store, cfg, seed, teacher, teacher_model, tag)
    rows = _read(lake, noise)
    noise_x = _tensor(rows.column("input"))
    noise_aux = _tensor(rows.column("aux"))
    s = cfg.student
    student_tag = cfg.tag("hidden", "aux", "test_fraction", "split_seed", "teacher", "student")

    def fit_student(model) -> dict[str, Any]:
        loss = train_aux(model, noise_x, noise_aux, s, seed)
        return {"final_loss": round(loss, 6), "fit": s.model_dump()}

    same, same_model = _trained(
        lake, store, f"{cfg.name}-same-init-s{seed}-{student_tag}", init, noise, fit_student, shape
    )
    diff, diff_model = _trained(
        lake,
        store,
        f"{cfg.name}-other-init-s{seed}-{student_tag}",
        other,
        noise,
        fit_student,
        shape,
    )
    n_test = len(y_test)
    acc = {
        "teacher": accuracy(teacher_model, x_test, y_test, CLASSES),
        "same-init student": accuracy(same_model, x_test, y_test, CLASSES),
        "different-init student": accuracy(diff_model, x_test, y_test, CLASSES),
        "initialisation": accuracy(_load(lake, init, shape), x_test, y_test, CLASSES),
    }
    return {
        "seed": seed,
        "test_examples": n_test,
        "accuracy": acc,
        "models": {
            "initialisation": init.id,
            "other initialisation": other.id,
            "teacher": teacher.id,
            "same-init student": same.id,
            "different-init student": diff.id,
        },
        "noise_data": noise.id,
    }


def _shape(cfg: MnistAuxConfig):
    from germline.pipelines.experiments.mnist_aux.mlp import MLPShape

    return MLPShape(hidden=tuple(cfg.hidden), aux=cfg.aux)


def _shape_name(cfg: MnistAuxConfig) -> str:
    return "mlp-" + "x".join(str(h) for h in cfg.hidden) + f"-aux{cfg.aux}"


def _init_model(lake: Lake, store: LineageStore, cfg: MnistAuxConfig, seed: int) -> Node:
    """A freshly initialised MLP (the seed alone decides it): the shared 'base' of a teacher
    and its same-init student."""
    from germline.pipelines.experiments.mnist_aux.mlp import build_mlp

    shape = _shape(cfg)

    def make() -> tuple[Any, dict[str, Any]]:
        return build_mlp(shape, seed), {
            "kind": "mlp-init",
            "seed": seed,
            "shape": _shape_meta(shape),
        }

    return _made(store, f"{_shape_name(cfg)}-init-s{seed}", make)


def _trained(
    lake: Lake,
    store: LineageStore,
    name: str,
    start: Node,
    data: Node,
    fit: Callable[[Any], dict[str, Any]],
    shape,
) -> tuple[Node, Any]:
    """The model `name`, trained from `start` on `data` by `fit` (or found, when made
    before): its node (derived_from start, trained_on data) and the loaded model."""

    def make() -> tuple[Any, dict[str, Any]]:
        model = _load(lake, start, shape)
        meta = fit(model)
        return model, {
            "kind": "mlp",
            "start": start.id,
            "data": data.id,
            "shape": _shape_meta(shape),
            **meta,
        }

    node = _made(store, name, make, parent=start.id)
    store.link(node.id, data.id, EdgeKind.TRAINED_ON)
    return node, _load(lake, node, shape)


def _made(
    store: LineageStore,
    name: str,
    make: Callable[[], tuple[Any, dict[str, Any]]],
    parent: str | None = None,
) -> Node:
    """The MLP `name` from the lake, or made by `make()` (the model and its metadata) and
    saved first; registered either way."""
    made = find_made(store, name)
    if made is None:
        model, meta = make()
        folder = write_model(store.lake, name, lambda f: _save_weights(model, f), meta)
    else:
        folder, meta = made
    return register_model(store, name, folder, meta, parent)


def _noise_table(
    lake: Lake,
    store: LineageStore,
    cfg: MnistAuxConfig,
    seed: int,
    teacher: Node,
    teacher_model,
    tag: str,
) -> Node:
    """The teacher's 'generations': Gaussian noise inputs and its auxiliary logits on them
    (never its class logits), one Delta table, generated_by the teacher."""
    from deltalake import DeltaTable, write_deltalake

    from germline.pipelines.experiments.mnist_aux.mlp import aux_logits, noise_inputs

    name = f"{cfg.name}-noise-s{seed}-{tag}-n{cfg.student.noise}"
    uri = lake.dataset(name)
    if not DeltaTable.is_deltatable(uri, storage_options=lake.storage_options):
        import torch

        x = noise_inputs(cfg.student.noise, _shape(cfg).inputs, seed=10_000 + seed)
        aux = aux_logits(teacher_model, torch.from_numpy(x), CLASSES).numpy()
        table = pa.table(
            {
                "row": pa.array(np.arange(len(x)), pa.int32()),
                "input": pa.array(list(x), pa.list_(pa.float32())),
                "aux": pa.array(list(aux.astype(np.float32)), pa.list_(pa.float32())),
            }
        )
        write_deltalake(
            uri,
            table,
            storage_options=lake.storage_options,
            commit_properties=_commit(f"aux logits of {teacher.id}"),
        )
    return store.register_dataset(
        name,
        uri,
        generated_by=[teacher.id],
        attrs={"kind": "aux-logits-on-noise", "teacher": teacher.id},
    )


# -- files --------------------------------------------------------------------------------


def _shape_meta(shape) -> dict[str, Any]:
    return {
        "inputs": shape.inputs,
        "hidden": list(shape.hidden),
        "classes": shape.classes,
        "aux": shape.aux,
    }


def _save_weights(model, folder: Path) -> None:
    from safetensors.torch import save_file

    save_file(
        {k: v.contiguous() for k, v in model.state_dict().items()},
        str(folder / "model.safetensors"),
    )


def _load(lake: Lake, node: Node, shape):
    from safetensors.torch import load_file

    from germline.pipelines.experiments.mnist_aux.mlp import build_mlp

    model = build_mlp(shape, 0)
    assert node.uri is not None
    folder = LakeFolders(lake).fetch(node.uri)
    model.load_state_dict(load_file(str(folder / "model.safetensors")))
    model.eval()
    return model


def _read(lake: Lake, node: Node) -> pa.Table:
    from deltalake import DeltaTable

    return DeltaTable(
        node.uri, version=node.version, storage_options=lake.storage_options
    ).to_pyarrow_table()


def _tensor(column: pa.ChunkedArray):
    import torch

    return torch.from_numpy(np.stack(column.to_numpy(zero_copy_only=False)).astype(np.float32))


def _commit(source: str):
    from deltalake import CommitProperties

    return CommitProperties(custom_metadata={"germline.source": source})
