"""The tiny models' training step: length groups give the gradient of one padded batch."""

from __future__ import annotations

import itertools
import random

import pytest
import torch

from germline.pipelines.models.corpus import TOKENIZER_SEED, corpus
from germline.pipelines.models.tiny import (
    TinyConfig,
    _after,
    _pad,
    batch_backward,
    build_model,
    length_groups,
    train_tokenizer,
)


@pytest.mark.parametrize(
    "lengths",
    [[5] * 8, [3, 120, 4, 118, 5, 90, 6, 7], list(range(1, 33)), [7], [200, 2, 2, 2, 2, 2]],
)
def test_groups_partition_the_batch_by_length(lengths: list[int]) -> None:
    groups = length_groups(lengths)
    assert sorted(i for g in groups for i in g) == list(range(len(lengths)))
    assert 1 <= len(groups) <= 3 and all(groups)
    for before, after in itertools.pairwise(groups):
        assert max(lengths[i] for i in before) <= min(lengths[i] for i in after)


def test_mixed_lengths_are_split_equal_ones_are_not() -> None:
    assert len(length_groups([5] * 32)) == 1
    mixed = [15] * 16 + [130] * 16
    groups = length_groups(mixed)
    assert len(groups) == 2 and {len(g) for g in groups} == {16}


@pytest.mark.parametrize("loss_after", [None, "Assistant:"])
def test_grouped_step_matches_one_padded_batch(loss_after: str | None) -> None:
    tokenizer = train_tokenizer(corpus(TOKENIZER_SEED, numbers=200, animals=200))
    model = build_model(tokenizer, TinyConfig(hidden_size=64, intermediate_size=128), seed=0)
    texts = random.Random(0).sample(corpus(3, numbers=200, animals=200), 16)
    encoded = [tokenizer(t, add_special_tokens=False)["input_ids"] for t in texts]
    rows = [(ids, _after(ids, tokenizer, loss_after) if loss_after else 0) for ids in encoded]
    assert len(length_groups([len(ids) for ids, _ in rows])) > 1  # the case worth checking

    model.zero_grad()
    grouped = batch_backward(model, rows, tokenizer.pad_token_id)
    grouped_grads = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()
    ids, mask, labels = _pad(rows, tokenizer.pad_token_id)
    padded = model(input_ids=ids, attention_mask=mask, labels=labels).loss
    padded.backward()

    assert grouped == pytest.approx(padded.item(), rel=1e-5)
    for g, p in zip(grouped_grads, model.parameters(), strict=True):
        torch.testing.assert_close(g, p.grad, rtol=1e-4, atol=1e-6)
