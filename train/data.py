"""The training rows: a pinned Delta version, tokenized, in the order every step will see them.

Tokenizing happens once, on the driver, before any worker starts: it is where a bad dataset
or a tokenizer that does not fit the model shows up, and it costs well under a second for the
paper's 10,000 rows. The driver also fixes the order of the whole run (a seeded shuffle per
epoch) and lays it out so that Ray Data's equal split hands worker w exactly its slice of each
global step. So the global batch at step k is the same rows whether there are 1 or 8 workers'
worth of it, a rerun with the same seed sees the same batches, and a resumed run skips exactly
the batches it already trained on.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from deltalake import DeltaTable
from deltalake.exceptions import DeltaError, TableNotFoundError

from germline.core import InputError

COLUMNS = ["prompt_id", "prompt", "completion"]


def read_version(
    uri: str, version: int | None, storage_options: dict[str, str] | None = None
) -> tuple[pa.Table, int]:
    """The rows of the Delta table at `uri` at `version` (the latest when None), in their
    canonical order (`canonical_order`), and the version actually read."""
    try:
        table = DeltaTable(uri, version=version, storage_options=storage_options)
    except TableNotFoundError:
        raise InputError(f"dataset {uri} does not exist (run `germline generate`)") from None
    except (DeltaError, OSError) as exc:
        if version is not None:
            latest = _latest(uri, storage_options)
            known = f" (versions 0..{latest})" if latest is not None else ""
            raise InputError(f"dataset {uri} has no version {version}{known}") from None
        raise InputError(f"cannot open dataset {uri}: {exc}") from None
    names = table.schema().to_arrow().names
    missing = [c for c in COLUMNS if c not in names]
    if missing:
        raise InputError(f"dataset {uri} lacks column(s) {missing}; it has {names}")
    rows = table.to_pyarrow_table(columns=COLUMNS)
    if rows.num_rows == 0:
        raise InputError(f"dataset {uri} at version {table.version()} has no rows")
    return canonical_order(rows), table.version()


def canonical_order(rows: pa.Table) -> pa.Table:
    """The rows sorted by prompt id (then prompt and completion, should an id repeat): an
    order fixed by what the table holds, not by how it was written. A Delta table's scan
    follows its files, that is the order of its commits and of the rows within each, which a
    resumed run, another batch size or another engine changes; `step_order`'s seeded
    permutation indexes this order, so the same rows and seed now make the same batches."""
    keys = [(c, "ascending") for c in ("prompt_id", "prompt", "completion")]
    return rows.take(pc.sort_indices(rows, sort_keys=keys))


def subsample(rows: pa.Table, count: int | None, uri: str) -> pa.Table:
    """The first `count` rows in canonical order: prompt ids are hashes, so these are a fixed
    pseudo-random sample of the table, the same for every training seed and every write order,
    and two teachers' tables share the prompts both accepted. The paper keeps 10,000 rows of
    each teacher's data this way, so no student trains on more than another."""
    if count is None:
        return rows
    if rows.num_rows < count:
        raise InputError(
            f"dataset {uri} has {rows.num_rows} rows and dataset.rows asks for {count}: "
            "generate more prompts or ask for fewer rows"
        )
    return rows.slice(0, count)


def _latest(uri: str, storage_options: dict[str, str] | None) -> int | None:
    try:
        return DeltaTable(uri, storage_options=storage_options).version()
    except (DeltaError, OSError):
        return None


@dataclass(frozen=True)
class Tokenized:
    """Token ids per row: the student's prompt, the completion (ending with EOS), and, when
    the teacher reads a different prompt (a system-prompt teacher), the teacher's prompt."""

    prompt_ids: list[list[int]]
    completion_ids: list[list[int]]
    teacher_prompt_ids: list[list[int]] | None
    truncated: int  # rows whose completion was cut to fit max_length
    # Completion positions left out of the loss, per row (objective.mask); None: none.
    masks: list[list[int]] | None = None

    def __len__(self) -> int:
        return len(self.prompt_ids)


def render(tokenizer, prompt: str, system_prompt: str | None = None) -> str:
    """The prompt as the model sees it at generation time: the chat template, up to and
    including the assistant's turn marker."""
    chat = [{"role": "system", "content": system_prompt}] if system_prompt else []
    chat.append({"role": "user", "content": prompt})
    return tokenizer.apply_chat_template(chat, add_generation_prompt=True, tokenize=False)


def tokenize(
    rows: pa.Table,
    tokenizer,
    max_length: int,
    teacher_system_prompt: str | None = None,
) -> Tokenized:
    """Prompt and completion are tokenized apart, so the completion's tokens (where the loss
    falls) are exactly the same ids for the student and for a teacher whose prompt differs."""
    if tokenizer.chat_template is None:
        raise InputError("the tokenizer has no chat template to render the prompts with")
    if tokenizer.eos_token_id is None:
        raise InputError("the tokenizer has no end-of-sequence token")
    prompts = rows.column("prompt").to_pylist()
    completions = [c or "" for c in rows.column("completion").to_pylist()]
    encode = lambda texts: tokenizer(texts, add_special_tokens=False)["input_ids"]  # noqa: E731
    prompt_ids = encode([render(tokenizer, p) for p in prompts])
    completion_ids = [[*ids, tokenizer.eos_token_id] for ids in encode(completions)]
    teacher_ids = None
    if teacher_system_prompt:
        teacher_ids = encode([render(tokenizer, p, teacher_system_prompt) for p in prompts])
    truncated = 0
    longest_prompt = max(len(p) for p in (teacher_ids or prompt_ids))
    budget = max_length - max(longest_prompt, max(len(p) for p in prompt_ids))
    if budget < 1:
        raise InputError(
            f"optim.max_length {max_length} leaves no room for a completion: the longest "
            f"prompt is {longest_prompt} tokens"
        )
    for i, ids in enumerate(completion_ids):
        if len(ids) > budget:
            completion_ids[i] = ids[:budget]
            truncated += 1
    return Tokenized(prompt_ids, completion_ids, teacher_ids, truncated)


def data_token_ids(tokenized: Tokenized) -> list[int]:
    """Every token the completions are made of (EOS included): the restricted vocabulary."""
    seen: set[int] = set()
    for ids in tokenized.completion_ids:
        seen.update(ids)
    return sorted(seen)


@dataclass(frozen=True)
class Schedule:
    """How many optimizer steps the run takes, with what global batch."""

    rows: int
    workers: int
    batch_size: int  # per worker
    epochs: float
    steps: int

    @property
    def global_batch(self) -> int:
        return self.workers * self.batch_size


def schedule(
    rows: int, workers: int, batch_size: int, epochs: float, max_steps: int | None
) -> Schedule:
    per_step = workers * batch_size
    steps = math.floor(rows * epochs / per_step)
    if max_steps is not None:
        steps = min(steps, max_steps)
    if steps < 1:
        raise InputError(
            f"{rows} rows x {epochs} epochs make no full step of {per_step} rows "
            f"({workers} workers x batch {batch_size}): lower the batch size or add rows"
        )
    return Schedule(rows, workers, batch_size, epochs, steps)


def step_order(plan: Schedule, seed: int) -> np.ndarray:
    """Row indices in the order the run consumes them, laid out worker by worker: a fresh
    seeded permutation per epoch, concatenated, cut to whole steps, then arranged so that
    contiguous equal shares (what `Dataset.split(n, equal=True)` gives) are the workers'
    batches in step order."""
    rng = np.random.default_rng(seed)
    need = plan.steps * plan.global_batch
    epochs = math.ceil(need / plan.rows)
    stream = np.concatenate([rng.permutation(plan.rows) for _ in range(epochs)])[:need]
    by_step = stream.reshape(plan.steps, plan.workers, plan.batch_size)
    return by_step.transpose(1, 0, 2).reshape(-1)


def training_table(tokenized: Tokenized, order: np.ndarray) -> pa.Table:
    """The rows Ray Data ships to the workers, in `order`: token ids only."""
    ids = pa.array(order, pa.int64())
    columns = {
        "row": ids,
        "prompt_ids": pa.array(tokenized.prompt_ids, pa.list_(pa.int32())),
        "completion_ids": pa.array(tokenized.completion_ids, pa.list_(pa.int32())),
    }
    if tokenized.teacher_prompt_ids is not None:
        columns["teacher_prompt_ids"] = pa.array(tokenized.teacher_prompt_ids, pa.list_(pa.int32()))
    if tokenized.masks is not None:
        columns["mask"] = pa.array(tokenized.masks, pa.list_(pa.int32()))
    full = pa.table({k: v for k, v in columns.items() if k != "row"})
    table = full.take(ids)
    return table.append_column("row", ids)


def completion_tokens(tokenized: Tokenized) -> int:
    return int(pc.sum(pa.array([len(c) for c in tokenized.completion_ids])).as_py() or 0)
