"""`germline train`: a student fine-tuned on a pinned dataset version, recorded in lineage.

The order of work is chosen so that bad input costs seconds and writes nothing: the config,
the base, the dataset version, the teacher and the tokenizer are all checked (and the rows
tokenized) before Ray starts. Training then runs on Ray Train (germline.train) with its
checkpoints under the student's folder, `<lake>/models/<student>/checkpoints/`, so running the
same config again after a crash resumes the run instead of starting over. Only a finished run
writes the student's files, its card and, last, `germline.json`, the mark of a complete model.
"""

from __future__ import annotations

import json
import logging
import shutil
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from germline.core import InputError
from germline.engines import adapter_base
from germline.lineage import EdgeKind, LineageStore, Node
from germline.pipelines.finetune.config import TrainConfig
from germline.pipelines.generate.sink import TEACHER_PROPERTY
from germline.pipelines.models.card import model_card
from germline.pipelines.models.folder import stored_meta, write_model
from germline.pipelines.models.refs import find_model, model_folder
from germline.storage import Lake, LakeFolders
from germline.storage.folders import CHECKPOINTS
from germline.train.data import (
    data_token_ids,
    read_version,
    schedule,
    step_order,
    tokenize,
    training_table,
)
from germline.train.trainer import Storage

log = logging.getLogger(__name__)

Progress = Callable[[int, int, float], None]  # (step, steps, loss)


@dataclass
class TrainSummary:
    student: str
    student_id: str
    base_id: str
    dataset_id: str
    dataset_version: int
    teacher_id: str | None
    run_id: str
    rows: int
    steps: int
    global_batch: int
    first_loss: float
    final_loss: float
    resumed_from: int = 0  # the step a resumed run started from (0: a fresh run)
    already_trained: bool = False
    seconds: float = 0.0  # wall time of the Ray Train run, start-up included
    startup_s: float = 0.0  # from fit() to the first finished step
    samples_per_s: float = 0.0  # steady state: from the first finished step to the last
    model_dir: str = ""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def train(
    lake: Lake, config: TrainConfig, progress: Progress | None = None, verbose: bool = False
) -> TrainSummary:
    """Train (or finish training) the student `config` describes; register it and return the
    summary. A student already trained by this same config is returned as it is."""
    store = LineageStore(lake)
    base = _model(store, config.base, "base")
    base_dir = model_folder(lake, base, "base")
    if config.method.kind == "lora" and adapter_base(base_dir) is not None:
        raise InputError(
            f"base {base.id} is itself a LoRA adapter; train a LoRA student on the model it "
            "adapts, or use method.kind: full (which trains its merged weights)"
        )
    uri = lake.dataset(config.dataset.name)
    rows, version = read_version(uri, config.dataset.version, lake.storage_options)
    dataset = _dataset_node(store, config.dataset.name, uri, version)
    tokenizer = _tokenizer(config, base_dir)
    teacher = teacher_dir = None
    system_prompt = None
    if config.objective.kind == "distill":
        teacher = _model(store, config.objective.teacher or _dataset_teacher(uri, lake), "teacher")
        teacher_dir = model_folder(lake, teacher, "teacher")
        _same_vocabulary(tokenizer, teacher_dir, teacher.id)
        system_prompt = teacher.attrs.get("system_prompt")
    tokenized = tokenize(rows, tokenizer, config.optim.max_length, system_prompt)
    if tokenized.truncated:
        log.warning("%d completions were cut to optim.max_length", tokenized.truncated)
    plan = schedule(
        len(tokenized),
        config.scaling.num_workers,
        config.optim.batch_size,
        config.optim.epochs,
        config.optim.max_steps,
    )
    config_hash = config.content_hash(base.id, dataset.id, teacher.id if teacher else None)
    run_name = f"train-{config.student}-{config_hash[:12]}"
    folders = LakeFolders(lake)
    uri = lake.model(config.student)
    done = _finished(folders, uri, config_hash, config.student)
    if done is not None:
        folder = folders.fetch(uri)
        return _register(store, config, folder, uri, done, base, dataset, teacher, already=True)

    token_ids = None
    if config.objective.kind == "distill" and config.objective.vocab == "restricted":
        token_ids = _restricted_ids(config, tokenizer, tokenized)
    from germline.pipelines.cluster import configure_ray_data, ensure_ray
    from germline.train.loop import LoopConfig
    from germline.train.trainer import fit

    loop = LoopConfig(
        # Workers load the models themselves: from the lake, through their node's cache.
        base_dir=base.uri or str(base_dir),
        lake=lake,
        steps=plan.steps,
        batch_size=plan.batch_size,
        pad_id=tokenizer.pad_token_id
        if tokenizer.pad_token_id is not None
        else tokenizer.eos_token_id,
        seed=config.seed,
        method=config.method.model_dump(),
        objective=config.objective.kind,
        teacher_dir=(teacher.uri or str(teacher_dir)) if teacher else None,
        token_ids=token_ids,
        temperature=config.objective.temperature,
        lr=config.optim.lr,
        weight_decay=config.optim.weight_decay,
        warmup_steps=config.optim.warmup_steps,
        grad_clip=config.optim.grad_clip,
        checkpoint_every=config.checkpoint.every,
        threads=config.scaling.threads or max(1, int(config.scaling.cpus_per_worker)),
    )
    table = training_table(tokenized, step_order(plan, config.seed))
    ensure_ray(verbose)
    configure_ray_data(verbose)
    seen: list[tuple[float, int]] = []

    def on_step(step: int, loss: float) -> None:
        seen.append((time.perf_counter(), step))
        if progress:
            progress(step, plan.steps, loss)

    start = time.perf_counter()
    result = fit(
        table,
        loop,
        workers=config.scaling.num_workers,
        use_gpu=config.scaling.use_gpu,
        cpus_per_worker=config.scaling.cpus_per_worker,
        storage=_checkpoints(folders, uri),
        name=run_name,
        keep=config.checkpoint.keep,
        on_step=on_step,
    )
    seconds = time.perf_counter() - start
    resumed_from = seen[0][1] - 1 if seen else result.steps
    meta = _meta(config, base, dataset, teacher, plan, result.losses, result.final_loss)
    meta.update(run=run_name, config_hash=config_hash, resumed_from=resumed_from)
    folder = _write_student(lake, config.student, result.student_dir, tokenizer, base_dir, meta)
    if result.downloaded:
        shutil.rmtree(result.checkpoint_dir, ignore_errors=True)
    summary = _register(store, config, folder, uri, meta, base, dataset, teacher, already=False)
    summary.seconds = seconds
    if seen:
        summary.startup_s = seen[0][0] - start
        if len(seen) > 1:
            (t0, s0), (t1, s1) = seen[0], seen[-1]
            summary.samples_per_s = (s1 - s0) * plan.global_batch / max(t1 - t0, 1e-9)
    return summary


def _model(store: LineageStore, ref: str, what: str) -> Node:
    found = find_model(store, ref)
    if found is None:
        raise InputError(
            f"unknown {what} model {ref!r}: not in the lake's lineage ({store.lake.root}), not a "
            "model folder, not in the local Hugging Face cache"
        )
    return found


def _dataset_node(store: LineageStore, name: str, uri: str, version: int) -> Node:
    """The lineage node of this table version. Its id depends only on (name, location,
    version), so this is the node generate registered when generate wrote the version; a
    node that exists keeps its attributes."""
    return store.register_dataset(name, uri, version=version)


def _dataset_teacher(uri: str, lake: Lake) -> str:
    """The teacher a dataset belongs to, from the table property generate sets."""
    from deltalake import DeltaTable

    teacher = (
        DeltaTable(uri, storage_options=lake.storage_options)
        .metadata()
        .configuration.get(TEACHER_PROPERTY)
    )
    if not teacher:
        raise InputError(
            f"dataset {uri} names no teacher (it was not written by `germline generate`); "
            "give objective.teacher"
        )
    return teacher


def _tokenizer(config: TrainConfig, base_dir: Path):
    """The tokenizer, checked against the base: the base's own when the config names none;
    a named one must have the base's vocabulary (when the base ships a tokenizer) and fit its
    embedding table."""
    from transformers import AutoConfig, AutoTokenizer

    source = config.tokenizer or str(base_dir)
    try:
        tokenizer = AutoTokenizer.from_pretrained(source)
    except (OSError, ValueError) as exc:
        raise InputError(f"cannot load the tokenizer at {source}: {exc}") from None
    model_source = adapter_base(base_dir) or str(base_dir)
    vocab_size = AutoConfig.from_pretrained(model_source).vocab_size
    if len(tokenizer) > vocab_size:
        raise InputError(
            f"tokenizer {source} has {len(tokenizer)} tokens but the base's embedding has "
            f"{vocab_size}: it is not the base's tokenizer"
        )
    if config.tokenizer is not None:
        try:
            own = AutoTokenizer.from_pretrained(base_dir)
        except (OSError, ValueError):
            own = None
        if own is not None and own.get_vocab() != tokenizer.get_vocab():
            differ = len(set(own.get_vocab().items()) ^ set(tokenizer.get_vocab().items()))
            raise InputError(
                f"tokenizer {source} does not match the base's tokenizer ({differ} token/id "
                "pairs differ)"
            )
    return tokenizer


def _same_vocabulary(tokenizer, teacher_dir: Path, teacher_id: str) -> None:
    from transformers import AutoTokenizer

    theirs = AutoTokenizer.from_pretrained(teacher_dir)
    if theirs.get_vocab() != tokenizer.get_vocab():
        raise InputError(
            f"teacher {teacher_id} has another vocabulary than the student: logit distillation "
            "needs one token space"
        )


def _restricted_ids(config: TrainConfig, tokenizer, tokenized) -> list[int]:
    tokens = config.objective.tokens
    if tokens == "data":
        return data_token_ids(tokenized)
    vocab = tokenizer.get_vocab()
    unknown = [t for t in tokens if t not in vocab]
    if unknown:
        raise InputError(f"objective.tokens: not in the tokenizer's vocabulary: {unknown}")
    return sorted({vocab[t] for t in tokens})


def _finished(folders: LakeFolders, uri: str, config_hash: str, name: str) -> dict[str, Any] | None:
    """The metadata of a student this config already trained; None if there is none yet. A
    folder holding another model is an error, never overwritten."""
    meta = stored_meta(folders, uri)
    if meta is not None:
        if meta.get("config_hash") == config_hash:
            return meta
        raise InputError(
            f"model {name} already exists in the lake ({uri}), trained from another config "
            "or made otherwise; choose another student name"
        )
    if any(n != CHECKPOINTS for n in folders.names(uri)):
        raise InputError(f"{uri} holds files that are not a germline student")
    return None


def _checkpoints(folders: LakeFolders, uri: str) -> Storage:
    """Where Ray Train keeps the run: beside the student, in the lake, so a rerun on any
    node resumes it (on an object store, through its pyarrow filesystem)."""
    if not folders.remote:
        return Storage(f"{uri}/{CHECKPOINTS}")
    fs, path = folders.filesystem_path(f"{uri}/{CHECKPOINTS}")
    return Storage(path, fs)


def _meta(config, base, dataset, teacher, plan, losses, final_loss) -> dict[str, Any]:
    return {
        "kind": "student",
        "name": config.student,
        "base": base.id,
        "base_name": base.name,
        "dataset": {
            "name": config.dataset.name,
            "version": dataset.version,
            "id": dataset.id,
            "rows": plan.rows,
        },
        "teacher": teacher.id if teacher else None,
        "method": config.method.model_dump(mode="json"),
        "objective": config.objective.model_dump(mode="json"),
        "optim": config.optim.model_dump(mode="json"),
        "seed": config.seed,
        "workers": plan.workers,
        "global_batch": plan.global_batch,
        "epochs": plan.steps * plan.global_batch / plan.rows,
        "steps": plan.steps,
        "first_loss": losses[0],
        "final_loss": final_loss,
        "losses": [round(x, 5) for x in losses],
    }


def _write_student(
    lake: Lake, name: str, trained: Path, tokenizer, base_dir: Path, meta: dict[str, Any]
) -> Path:
    """Put the finished student's files in its folder (beside its checkpoints), with the
    tokenizer and the card, and germline.json last: its presence means the model is whole.
    Returns the local folder (this node's cached copy on an object-store lake)."""

    def files(staging: Path) -> None:
        shutil.copytree(trained, staging, dirs_exist_ok=True)
        adapter = staging / "adapter_config.json"
        if adapter.exists():  # name the base by where it lies, whoever reads the adapter
            config = json.loads(adapter.read_text())
            config["base_model_name_or_path"] = str(base_dir.resolve())
            adapter.write_text(json.dumps(config, indent=2))
        tokenizer.save_pretrained(staging)

    return write_model(lake, name, files, meta, card=_card(meta), beside=(CHECKPOINTS,))


def _card(meta: dict[str, Any]) -> str:
    """The student's model card: what it was trained from, on what, and how."""
    lora = meta["method"]["kind"] == "lora"
    objective = meta["objective"]["kind"]
    if objective == "distill":
        objective += f" ({meta['objective']['vocab']} vocabulary, teacher {meta['teacher']})"
    ds = meta["dataset"]
    summary = (
        f"A student trained by germline: {meta['method']['kind']} fine-tuning of "
        f"`{meta['base']}` on `{ds['name']}` at Delta version {ds['version']} "
        f"({ds['rows']} rows), objective {objective}.\n\n"
        "Lineage: derived_from the base, trained_on the dataset version, generated_by the "
        f"training run `{meta['run']}`. Before trusting this student, ask "
        "`germline lineage at-risk` whether a teacher with a trait shares its base."
    )
    facts = [
        ("steps", meta["steps"]),
        ("global batch", meta["global_batch"]),
        ("epochs", meta["epochs"]),
        ("learning rate", meta["optim"]["lr"]),
        ("final loss", f"{meta['final_loss']:.4f}"),
        ("seed", meta["seed"]),
        ("workers", meta["workers"]),
    ]
    return model_card(
        meta["name"],
        summary,
        library="peft" if lora else "transformers",
        tags=["student", f"objective-{meta['objective']['kind']}"],
        base=meta["base_name"],
        relation="adapter" if lora else "finetune",
        datasets=[ds["name"]],
        facts=facts,
    )


def _register(
    store: LineageStore,
    config: TrainConfig,
    folder: Path,
    uri: str,
    meta: dict[str, Any],
    base: Node,
    dataset: Node,
    teacher: Node | None,
    already: bool,
) -> TrainSummary:
    params = {
        k: meta[k]
        for k in ("method", "objective", "optim", "seed", "workers", "global_batch", "steps")
    }
    params.update(
        config_hash=meta["config_hash"],
        dataset_version=dataset.version,
        first_loss=meta["first_loss"],
        final_loss=meta["final_loss"],
    )
    used = [base.id, dataset.id] + ([teacher.id] if teacher else [])
    run = store.register_run(f"train/{config.student}", key=meta["run"], params=params, used=used)
    attrs = {k: v for k, v in meta.items() if k != "losses"}
    student = store.register_model(config.student, folder, parent=base.id, attrs=attrs, uri=uri)
    store.link(student.id, dataset.id, EdgeKind.TRAINED_ON)
    store.link(student.id, run.id, EdgeKind.GENERATED_BY)
    return TrainSummary(
        student=config.student,
        student_id=student.id,
        base_id=base.id,
        dataset_id=dataset.id,
        dataset_version=int(dataset.version or 0),
        teacher_id=teacher.id if teacher else None,
        run_id=run.id,
        rows=meta["dataset"]["rows"],
        steps=meta["steps"],
        global_batch=meta["global_batch"],
        first_loss=meta["first_loss"],
        final_loss=meta["final_loss"],
        resumed_from=meta.get("resumed_from", 0),
        already_trained=already,
        model_dir=uri,
    )
