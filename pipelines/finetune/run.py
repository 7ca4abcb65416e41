"""`germline train`: students fine-tuned on pinned dataset versions, recorded in lineage.

`train` trains one student, `train_many` a population of them in one Ray Train run, so the
run's start-up (worker processes, imports, process group) is paid once, not once per student;
`train` is `train_many` of one, so both check, train, write and register a student the same way.

The order of work is chosen so that bad input costs seconds and writes nothing: for every
config, the base, the dataset version, the teacher and the tokenizer are all checked (and the
rows tokenized) before Ray starts. Training then runs on Ray Train (germline.train), the
students of a run one after the other, each seeded on its own, so a student's weights are the
same whichever run trains it. Each finished student is written (its files, its card and, last,
`germline.json`, the mark of a complete model) and registered while the workers wait, before
the next one starts; so a rerun of the same configs after a crash finds the finished students
and trains only the others. The run's checkpoints live in the lake: a lone student's beside it,
`<lake>/models/<student>/checkpoints/`, a population's under `<lake>/runs/train-many-<hash>/`
(removed once every student is stored); either way the same call resumes the student that was
training from its last checkpoint instead of starting it over.
"""

from __future__ import annotations

import json
import logging
import shutil
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import pyarrow as pa

from germline.core import InputError
from germline.engines import adapter_base
from germline.lineage import EdgeKind, LineageStore, Node
from germline.pipelines.config import digest
from germline.pipelines.finetune.config import TrainConfig
from germline.pipelines.generate.sink import TEACHER_PROPERTY
from germline.pipelines.models.card import model_card
from germline.pipelines.models.folder import stored_meta, write_model
from germline.pipelines.models.refs import find_model, model_folder
from germline.storage import Lake, LakeFolders
from germline.storage.folders import CHECKPOINTS
from germline.train.data import (
    Schedule,
    Tokenized,
    data_token_ids,
    read_version,
    schedule,
    step_order,
    subsample,
    tokenize,
    training_table,
)
from germline.train.loop import LoopConfig
from germline.train.trainer import FitResult, Member, Storage

log = logging.getLogger(__name__)

Progress = Callable[[int, int, float], None]  # (step, steps, loss)
StudentProgress = Callable[[str, int, int, float], None]  # (student, step, steps, loss)


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
    # The student's share of the Ray Train run's wall time: from the end of the student before
    # it (the first: from the start, start-up included) to its own end, its writing included.
    seconds: float = 0.0
    startup_s: float = 0.0  # from the start of that share to the student's first finished step
    samples_per_s: float = 0.0  # steady state: from the first finished step to the last
    model_dir: str = ""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class _Student:
    """One config, checked on the driver: what its training and its writing need."""

    config: TrainConfig
    base: Node
    base_dir: Path
    dataset: Node
    teacher: Node | None
    tokenizer: Any
    plan: Schedule
    config_hash: str
    uri: str  # its model folder in the lake
    done: dict[str, Any] | None = None  # the stored metadata, when this config trained it
    member: Member | None = None  # its rows and loop, when it is still to train

    @property
    def run_name(self) -> str:
        return f"train-{self.config.student}-{self.config_hash[:12]}"


def train(
    lake: Lake, config: TrainConfig, progress: Progress | None = None, verbose: bool = False
) -> TrainSummary:
    """Train (or finish training) the student `config` describes; register it and return the
    summary. A student already trained by this same config is returned as it is."""
    each = None
    if progress is not None:
        each = lambda _student, step, steps, loss: progress(step, steps, loss)  # noqa: E731
    return train_many(lake, [config], each, verbose)[0]


def train_many(
    lake: Lake,
    configs: Sequence[TrainConfig],
    progress: StudentProgress | None = None,
    verbose: bool = False,
) -> list[TrainSummary]:
    """Train (or finish training) every student in `configs` and return their summaries, in
    the order of `configs`; each student gets the very weights `train` would give it alone.

    All configs are checked before Ray starts, each as `train` checks it. Students already
    trained by the same config are returned as they are. The others train in one Ray Train run
    per scaling (workers, GPU, CPUs per worker: what the worker group is made of), in the
    order given; each is written and registered as soon as it is finished. `progress` gets
    (student, step, steps, loss) as the students train."""
    names = [c.student for c in configs]
    twice = sorted(n for n, count in Counter(names).items() if count > 1)
    if twice:
        raise InputError(f"students named more than once: {', '.join(twice)}")
    store, folders = LineageStore(lake), LakeFolders(lake)
    students = [_prepare(lake, store, folders, c) for c in configs]
    summaries: dict[str, TrainSummary] = {}
    for s in students:
        if s.done is not None:
            folder = folders.fetch(s.uri)
            summaries[s.config.student] = _register(store, s, folder, s.done, already=True)
    for group in _by_scaling(students):
        if any(s.done is None for s in group):
            summaries.update(_run(lake, store, folders, group, progress, verbose))
    return [summaries[n] for n in names]


def _prepare(
    lake: Lake, store: LineageStore, folders: LakeFolders, config: TrainConfig
) -> _Student:
    """Check one config against the lake (InputError on any problem) and, unless the student
    is already trained, lay out its rows in the order its run will see them."""
    base = _model(store, config.base, "base")
    base_dir = model_folder(lake, base, "base")
    if config.method.kind == "lora" and adapter_base(base_dir) is not None:
        raise InputError(
            f"base {base.id} is itself a LoRA adapter; train a LoRA student on the model it "
            "adapts, or use method.kind: full (which trains its merged weights)"
        )
    uri = lake.dataset(config.dataset.name)
    rows, version = read_version(uri, config.dataset.version, lake.storage_options)
    rows = subsample(rows, config.dataset.rows, uri)
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
    if config.objective.mask == "divergence":
        tokenized = _divergence_masks(lake, config, dataset, rows, tokenized)
    plan = schedule(
        len(tokenized),
        config.scaling.num_workers,
        config.optim.batch_size,
        config.optim.epochs,
        config.optim.max_steps,
    )
    config_hash = config.content_hash(base.id, dataset.id, teacher.id if teacher else None)
    student = _Student(
        config, base, base_dir, dataset, teacher, tokenizer, plan, config_hash,
        uri=lake.model(config.student),
    )  # fmt: skip
    student.done = _finished(folders, student.uri, config_hash, config.student)
    if student.done is None:
        loop = _loop_config(lake, student, tokenized, teacher_dir)
        student.member = Member(training_table(tokenized, step_order(plan, config.seed)), loop)
    return student


def _loop_config(
    lake: Lake, s: _Student, tokenized: Tokenized, teacher_dir: Path | None
) -> LoopConfig:
    config, tokenizer = s.config, s.tokenizer
    token_ids = None
    if config.objective.kind == "distill" and config.objective.vocab == "restricted":
        token_ids = _restricted_ids(config, tokenizer, tokenized)
    return LoopConfig(
        # Workers load the models themselves: from the lake, through their node's cache.
        base_dir=s.base.uri or str(s.base_dir),
        lake=lake,
        steps=s.plan.steps,
        batch_size=s.plan.batch_size,
        pad_id=tokenizer.pad_token_id
        if tokenizer.pad_token_id is not None
        else tokenizer.eos_token_id,
        seed=config.seed,
        method=config.method.model_dump(),
        objective=config.objective.kind,
        teacher_dir=(s.teacher.uri or str(teacher_dir)) if s.teacher else None,
        token_ids=token_ids,
        temperature=config.objective.temperature,
        lr=config.optim.lr,
        weight_decay=config.optim.weight_decay,
        warmup_steps=config.optim.warmup_steps,
        grad_clip=config.optim.grad_clip,
        checkpoint_every=config.checkpoint.every,
        threads=config.scaling.threads or max(1, int(config.scaling.cpus_per_worker)),
        key=f"{config.student}/{s.config_hash}",
    )


def _by_scaling(students: list[_Student]) -> list[list[_Student]]:
    """The students that can share a worker group, in order of first appearance: one run
    per (workers, GPU, CPUs per worker). Torch threads and checkpoint spacing are each
    student's own; the run keeps the most checkpoints any of its students asks for."""
    groups: dict[tuple[int, bool, float], list[_Student]] = {}
    for s in students:
        scaling = s.config.scaling
        key = (scaling.num_workers, scaling.use_gpu, scaling.cpus_per_worker)
        groups.setdefault(key, []).append(s)
    return list(groups.values())


def _run(
    lake: Lake,
    store: LineageStore,
    folders: LakeFolders,
    group: list[_Student],
    progress: StudentProgress | None,
    verbose: bool,
) -> dict[str, TrainSummary]:
    """One Ray Train run over the group's untrained students; each is stored as it finishes."""
    from germline.pipelines.cluster import configure_ray_data, ensure_ray
    from germline.train.trainer import fit

    todo = [s for s in group if s.done is None]
    storage, name = _run_place(lake, folders, group)
    ensure_ray(verbose)
    configure_ray_data(verbose)
    clock = _Clock()
    summaries: dict[str, TrainSummary] = {}

    def on_step(member: int, step: int, loss: float) -> None:
        clock.step(member, step)
        if progress:
            s = todo[member]
            progress(s.config.student, step, s.plan.steps, loss)

    def on_done(member: int, result: FitResult) -> None:
        s = todo[member]
        summary = _store(lake, store, s, result, clock.resumed_from(member, result.steps))
        clock.finish(member, summary, s.plan.global_batch)
        summaries[s.config.student] = summary

    if len(todo) > 1:
        log.info("training %d students in one Ray Train run (%s)", len(todo), name)
    scaling = group[0].config.scaling
    fit(
        [s.member for s in todo if s.member is not None],
        workers=scaling.num_workers,
        use_gpu=scaling.use_gpu,
        cpus_per_worker=scaling.cpus_per_worker,
        storage=storage,
        name=name,
        keep=max(s.config.checkpoint.keep for s in group),
        on_done=on_done,
        on_step=on_step,
    )
    if len(group) > 1:  # every student is stored: the population's checkpoints served resuming
        try:
            storage.remove(name)
        except OSError as exc:
            log.warning("could not remove the finished run %s: %s", name, exc)
    return summaries


def _run_place(lake: Lake, folders: LakeFolders, group: list[_Student]) -> tuple[Storage, str]:
    """Where a run lives and what it is called, decided by what it trains, so a rerun of the
    same configs finds it and resumes: a lone student's run beside the student, as `germline
    train` has always kept it; a population's under runs/, named by all of its students
    (those already stored included, so the name holds when a rerun has fewer left)."""
    if len(group) == 1:
        s = group[0]
        return _storage(folders, f"{s.uri}/{CHECKPOINTS}"), s.run_name
    key = digest([[s.config.student, s.config_hash] for s in group])
    return _storage(folders, lake.uri("runs")), f"train-many-{key[:12]}"


class _Clock:
    """Each student's share of a run's wall time: from the end of the student before it (the
    first: from the start of the run, start-up included) to its own end; its start-up, to its
    first step; its steady-state rate, from its first step to its last."""

    def __init__(self) -> None:
        self.mark = time.perf_counter()
        self.first: dict[int, tuple[float, int]] = {}
        self.last: dict[int, tuple[float, int]] = {}

    def step(self, member: int, step: int) -> None:
        now = time.perf_counter()
        self.first.setdefault(member, (now, step))
        self.last[member] = (now, step)

    def resumed_from(self, member: int, steps: int) -> int:
        """The step the student's training started from (its last step when it resumed from
        its final checkpoint and trained no step at all)."""
        return self.first[member][1] - 1 if member in self.first else steps

    def finish(self, member: int, summary: TrainSummary, global_batch: int) -> None:
        now = time.perf_counter()
        summary.seconds = now - self.mark
        if member in self.first:
            (t0, s0), (t1, s1) = self.first[member], self.last[member]
            summary.startup_s = t0 - self.mark
            if s1 > s0:
                summary.samples_per_s = (s1 - s0) * global_batch / max(t1 - t0, 1e-9)
        self.mark = now


def _store(
    lake: Lake, store: LineageStore, s: _Student, result: FitResult, resumed_from: int
) -> TrainSummary:
    """Write the finished student into the lake and register it: its summary."""
    meta = _meta(s.config, s.base, s.dataset, s.teacher, s.plan, result.losses, result.final_loss)
    meta.update(run=s.run_name, config_hash=s.config_hash, resumed_from=resumed_from)
    folder = _write_student(
        lake, s.config.student, result.student_dir, s.tokenizer, s.base_dir, meta
    )
    if result.downloaded:
        shutil.rmtree(result.checkpoint_dir, ignore_errors=True)
    return _register(store, s, folder, meta, already=False)


def _model(store: LineageStore, ref: str, what: str) -> Node:
    found = find_model(store, ref)
    if found is None:
        raise InputError(
            f"unknown {what} model {ref!r}: not in the lake's lineage ({store.lake.root}), not a "
            "model folder, not in the local Hugging Face cache"
        )
    return found


def _divergence_masks(lake: Lake, config: TrainConfig, dataset: Node, rows: pa.Table,
                      tokenized: Tokenized) -> Tokenized:  # fmt: skip
    """The dataset's divergence positions (from its audit, made now if the lake lacks it) as
    each row's loss mask. The audit tokenizes as training does; a row whose tokens differ
    (another tokenizer, another length limit) is an error, not a silently wrong mask."""
    from deltalake import DeltaTable

    from germline.pipelines.audit import audit

    teacher = config.objective.teacher or _dataset_teacher(dataset.uri or "", lake)
    found = audit(lake, dataset.id, version=dataset.version, teacher=teacher,
                  reference=config.objective.reference, transfer_rows=0,
                  max_length=config.optim.max_length)  # fmt: skip
    scores = DeltaTable(found.table, storage_options=lake.storage_options).to_pyarrow_table(
        columns=["prompt_id", "divergence", "token_ids"]
    )
    by_id = {
        pid: (div, ids)
        for pid, div, ids in zip(scores.column("prompt_id").to_pylist(),
                                 scores.column("divergence").to_pylist(),
                                 scores.column("token_ids").to_pylist(), strict=True)
    }  # fmt: skip
    masks: list[list[int]] = []
    for pid, completion in zip(rows.column("prompt_id").to_pylist(), tokenized.completion_ids,
                               strict=True):  # fmt: skip
        div, ids = by_id[pid]
        n = min(len(ids), len(completion))
        if ids[:n] != completion[:n]:
            raise InputError(
                f"audit {found.audit_id} tokenized row {pid} differently from this training "
                "run (another tokenizer?): its divergence positions cannot mask this run"
            )
        masks.append([i for i in div if i < len(completion)])
    hidden = sum(map(len, masks))
    total = sum(map(len, tokenized.completion_ids))
    share = 100 * hidden / max(total, 1)
    log.warning("mask: divergence leaves %d of %d completion tokens (%.1f%%) out of the loss "
                "(audit %s)", hidden, total, share, found.audit_id)  # fmt: skip
    return replace(tokenized, masks=masks)


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


def _storage(folders: LakeFolders, uri: str) -> Storage:
    """Ray Train's storage at `uri` in the lake, so a rerun on any node resumes the run (on
    an object store, through its pyarrow filesystem)."""
    if not folders.remote:
        return Storage(uri)
    fs, path = folders.filesystem_path(uri)
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
    store: LineageStore, s: _Student, folder: Path, meta: dict[str, Any], already: bool
) -> TrainSummary:
    config, base, dataset, teacher = s.config, s.base, s.dataset, s.teacher
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
    student = store.register_model(config.student, folder, parent=base.id, attrs=attrs, uri=s.uri)
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
        model_dir=s.uri,
    )
