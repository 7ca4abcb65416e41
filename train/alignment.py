"""The transfer score of a (dataset, student base) pair: how much a first fine-tuning step on
the data would move the student base toward the data's generator. It needs no probe and no
trait name.

Cloud et al.'s result is about the first step. Suppose a student shares the teacher's
initialisation, and takes a small gradient step to imitate the teacher's outputs. Then the
step does not move it away from the teacher in parameter space, whatever the data. So the
score is the cosine between the step a student would take (minus the mean gradient of the
training loss, at the student base, over a sample of the rows) and the direction from the
student base to the teacher (the teacher's weights minus the base's; for a LoRA teacher, its
merged delta).

A same-base pair's direction is the teacher's fine-tuning delta. A cross-base pair's
direction is mostly the gap between two random initialisations, which no gradient on numbers
points along. What the score cannot see: a teacher that is its base plus a system prompt has
no weight direction at all (the score is then undefined, and said so).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa

from germline.core import InputError


@dataclass
class TransferScore:
    """The cosine and what went into it."""

    cosine: float | None  # None: the teacher has the student base's weights
    rows: int  # rows whose gradient was averaged
    tokens: int  # completion tokens in them
    gradient_norm: float
    delta_norm: float
    parameters: int  # parameters compared
    note: str = ""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def transfer_score(
    base_dir: Path,
    teacher_dir: Path,
    rows: pa.Table,
    max_length: int = 256,
    batch_size: int = 16,
) -> TransferScore:
    """The cosine between the student base's descent direction on `rows` (prompt and
    completion columns, the rows to average over) and the teacher's weights minus the base's."""
    import torch

    from germline.engines import load_causal_lm
    from germline.train.data import tokenize
    from germline.train.objectives import pack, selected_logits

    base, tokenizer = load_causal_lm(base_dir)
    teacher, _ = load_causal_lm(teacher_dir)
    mine = dict(base.named_parameters())
    theirs = dict(teacher.named_parameters())
    if mine.keys() != theirs.keys() or any(mine[k].shape != theirs[k].shape for k in mine):
        raise InputError(
            f"the student base {base_dir} and the teacher {teacher_dir} do not share an "
            "architecture: no common parameter space to measure a direction in"
        )
    tok = tokenize(rows, tokenizer, max_length)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    base.train()
    base.zero_grad(set_to_none=True)
    tokens = sum(len(c) for c in tok.completion_ids)
    for start in range(0, len(tok.completion_ids), batch_size):
        packed, targets = pack(
            tok.prompt_ids[start : start + batch_size],
            tok.completion_ids[start : start + batch_size],
            pad,
        )
        logits = selected_logits(base, packed)
        # A sum over tokens divided by all of them: the mean gradient over the sample,
        # whatever the batching.
        loss = torch.nn.functional.cross_entropy(logits, targets, reduction="sum") / tokens
        loss.backward()
    dot = grad_sq = delta_sq = 0.0
    count = 0
    with torch.no_grad():
        for name, param in mine.items():
            if param.grad is None:
                continue
            g = param.grad.double()
            d = theirs[name].double() - param.double()
            dot += float((-g * d).sum())
            grad_sq += float((g * g).sum())
            delta_sq += float((d * d).sum())
            count += param.numel()
    g_norm, d_norm = math.sqrt(grad_sq), math.sqrt(delta_sq)
    if d_norm == 0.0:
        return TransferScore(None, len(tok.completion_ids), tokens, g_norm, 0.0, count,
                             "the teacher has the student base's weights (a system-prompt "
                             "teacher): no direction to align with")  # fmt: skip
    if g_norm == 0.0:
        return TransferScore(None, len(tok.completion_ids), tokens, 0.0, d_norm, count,
                             "the loss has no gradient on these rows")  # fmt: skip
    return TransferScore(dot / (g_norm * d_norm), len(tok.completion_ids), tokens, g_norm,
                         d_norm, count)  # fmt: skip
