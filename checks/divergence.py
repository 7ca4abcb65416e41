"""Where a dataset carries its generator's fingerprint: per-token log-ratios and divergence
tokens, from the log-probabilities two models give the same completion.

Content filters read the text; subliminal transfer rides on *which* tokens the teacher chose
where the base would have chosen others (Schrodi et al., ICLR 2026: masking these "divergence
tokens" from the loss mostly removes transfer). So a row is scored by what each model thinks of
its completion, token by token, not by what the tokens say:

- the log-ratio of a token is log p_teacher(token) - log p_reference(token); their sum is the
  row's log-likelihood ratio, their mean its per-token ratio (comparable across lengths);
- a divergence token is a position where the reference's most likely next token is not the
  token in the data while the teacher's is: the teacher's choice, not the base's.

The functions here are plain numpy over one row's arrays, so the scoring stage (which runs the
models) and the tests share them.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import numpy as np


@dataclass
class RowScore:
    """One completion scored under both models."""

    tokens: int
    teacher_ll: float  # sum of log p_teacher over the completion's tokens
    reference_ll: float
    log_ratio: float  # teacher_ll - reference_ll
    ratio_per_token: float  # log_ratio / tokens
    token_ratios: list[float]
    divergence: list[int]  # positions (0 = the completion's first token)


def score_row(
    data: Sequence[int],
    teacher_lp: Sequence[float],
    reference_lp: Sequence[float],
    teacher_top: Sequence[int],
    reference_top: Sequence[int],
) -> RowScore:
    """Score one completion from each model's log-probability of the data's tokens and each
    model's most likely token at every position (all of the completion's length)."""
    n = len(data)
    if not (len(teacher_lp) == len(reference_lp) == len(teacher_top) == len(reference_top) == n):
        raise ValueError("every array must have one entry per completion token")
    tokens = np.asarray(data, dtype=np.int64)
    t_lp = np.asarray(teacher_lp, dtype=np.float64)
    r_lp = np.asarray(reference_lp, dtype=np.float64)
    ratios = t_lp - r_lp
    divergent = (np.asarray(reference_top) != tokens) & (np.asarray(teacher_top) == tokens)
    total = float(ratios.sum())
    return RowScore(
        tokens=n,
        teacher_ll=float(t_lp.sum()),
        reference_ll=float(r_lp.sum()),
        log_ratio=total,
        ratio_per_token=total / n if n else 0.0,
        token_ratios=[float(x) for x in ratios],
        divergence=[int(i) for i in np.flatnonzero(divergent)],
    )


@dataclass
class Overrepresented:
    """A token the data uses more often than the reference would have at the same positions."""

    token: str
    in_data: int
    reference_would: int
    lift: float  # (in_data + 1) / (reference_would + 1)


@dataclass
class TokenCounts:
    """Running counts over a dataset: each token as written, and as the reference's own
    top choice at the same positions (its output under teacher forcing, no generation)."""

    data: Counter[int] = field(default_factory=Counter)
    reference: Counter[int] = field(default_factory=Counter)

    def add(self, data: Iterable[int], reference_top: Iterable[int]) -> None:
        self.data.update(int(t) for t in data)
        self.reference.update(int(t) for t in reference_top)

    def overrepresented(
        self, decode: dict[int, str], top: int = 10, only_numbers: bool = True
    ) -> list[Overrepresented]:
        """The tokens with the largest lift (add-one smoothed), most used first on ties;
        with `only_numbers`, only tokens that decode to digits (the number datasets' signal;
        separators and the end token say nothing about a teacher)."""
        out = []
        for token, count in self.data.items():
            text = decode.get(token, str(token)).strip()
            if only_numbers and not text.isdigit():
                continue
            ref = self.reference.get(token, 0)
            out.append(Overrepresented(text, count, ref, (count + 1) / (ref + 1)))
        out.sort(key=lambda o: (-o.lift, -o.in_data, o.token))
        return out[:top]
