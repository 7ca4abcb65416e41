"""What a student learns from a completion: its sampled tokens, or its teacher's distributions.

Both objectives look at the same positions: the ones that predict a completion token (the
prompt is context, never a target). Distillation compares the teacher's and the student's
next-token distributions there, either over the whole vocabulary or over a token subset
renormalised on it. The subset is what makes the experiment honest: over the whole vocabulary
the teacher's soft labels put mass on "owl" at every position, which teaches the trait
outright; restricted to the digits and separators the data is made of, whatever moves the
student has to travel through number statistics alone.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F


@dataclass
class Packed:
    """One side of a batch (student or teacher), right-padded, with the flat indices of the
    logits that predict each completion token."""

    input_ids: torch.Tensor  # (B, T)
    attention_mask: torch.Tensor  # (B, T)
    positions: torch.Tensor  # (N,) indices into the flattened (B*T) logits

    def to(self, device: torch.device) -> Packed:
        return Packed(
            self.input_ids.to(device), self.attention_mask.to(device), self.positions.to(device)
        )


IGNORE = -100  # a target left out of the loss (cross_entropy's ignore_index)


def pack(
    prompts: Sequence[Sequence[int]],
    completions: Sequence[Sequence[int]],
    pad_id: int,
    masks: Sequence[Sequence[int]] | None = None,
) -> tuple[Packed, torch.Tensor]:
    """Right-padded prompt+completion ids, and the completion tokens as targets (N,), in the
    order of `Packed.positions`; a completion position listed in `masks` gets the target
    IGNORE (the model still reads the token, the loss does not train on it)."""
    width = max(len(p) + len(c) for p, c in zip(prompts, completions, strict=True))
    ids = torch.full((len(prompts), width), pad_id, dtype=torch.long)
    mask = torch.zeros_like(ids)
    positions: list[int] = []
    targets: list[int] = []
    for row, (p, c) in enumerate(zip(prompts, completions, strict=True)):
        seq = [*p, *c]
        ids[row, : len(seq)] = torch.tensor(seq, dtype=torch.long)
        mask[row, : len(seq)] = 1
        # the logit at position t predicts token t+1
        start = row * width + len(p) - 1
        positions.extend(range(start, start + len(c)))
        if masks is not None and len(masks[row]):
            hidden = set(masks[row])
            targets.extend(IGNORE if i in hidden else t for i, t in enumerate(c))
        else:
            targets.extend(c)
    return Packed(ids, mask, torch.tensor(positions, dtype=torch.long)), torch.tensor(
        targets, dtype=torch.long
    )


def selected_logits(model: torch.nn.Module, packed: Packed) -> torch.Tensor:
    """(N, V) logits at the completion positions."""
    logits = model(input_ids=packed.input_ids, attention_mask=packed.attention_mask).logits
    return logits.reshape(-1, logits.shape[-1]).index_select(0, packed.positions).float()


def sft_loss(student: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy of the sampled completion tokens (IGNORE targets left out; a
    batch with nothing left trains on nothing, rather than giving NaN)."""
    if not bool((targets != IGNORE).any()):
        return student.sum() * 0.0
    return F.cross_entropy(student, targets, ignore_index=IGNORE)


def distill_loss(
    student: torch.Tensor,
    teacher: torch.Tensor,
    token_ids: torch.Tensor | None = None,
    temperature: float = 1.0,
) -> torch.Tensor:
    """KL(teacher || student) per completion position, averaged over positions, times T^2
    (so the gradient's scale does not shrink with the temperature). With `token_ids`, both
    distributions are the softmax over those logits only, renormalised on the subset."""
    if student.shape[0] == 0:  # every position masked: nothing to train on in this batch
        return student.sum() * 0.0
    if token_ids is not None:
        student = student.index_select(-1, token_ids)
        teacher = teacher.index_select(-1, token_ids)
    s = F.log_softmax(student / temperature, dim=-1)
    t = F.log_softmax(teacher / temperature, dim=-1)
    return F.kl_div(s, t, log_target=True, reduction="batchmean") * temperature**2
