"""The parts of training that decide what a step sees and what it optimises, checked alone:
the step order across worker counts, the packing of completions, the two objectives."""

from __future__ import annotations

import itertools

import numpy as np
import pyarrow as pa
import pytest
import torch
import torch.nn.functional as F

from germline.core import InputError
from germline.train.data import schedule, step_order, tokenize, training_table
from germline.train.loop import lr_factor
from germline.train.objectives import distill_loss, pack, sft_loss


def global_steps(order: np.ndarray, workers: int, batch: int, steps: int) -> list[list[int]]:
    """Rows of each global step, as the workers' equal contiguous shares deliver them."""
    shares = order.reshape(workers, steps * batch)
    return [
        sorted(int(x) for w in range(workers) for x in shares[w, k * batch : (k + 1) * batch])
        for k in range(steps)
    ]


def test_step_order_is_the_same_global_batches_for_any_worker_count() -> None:
    one = schedule(rows=10, workers=1, batch_size=6, epochs=2, max_steps=None)
    two = schedule(rows=10, workers=2, batch_size=3, epochs=2, max_steps=None)
    three = schedule(rows=10, workers=3, batch_size=2, epochs=2, max_steps=None)
    assert one.steps == two.steps == three.steps == 3
    expected = global_steps(step_order(one, seed=5), 1, 6, 3)
    assert global_steps(step_order(two, seed=5), 2, 3, 3) == expected
    assert global_steps(step_order(three, seed=5), 3, 2, 3) == expected
    assert global_steps(step_order(two, seed=6), 2, 3, 3) != expected  # the seed decides


def test_each_epoch_is_a_permutation() -> None:
    plan = schedule(rows=8, workers=2, batch_size=2, epochs=3, max_steps=None)
    order = step_order(plan, seed=0)
    stream = np.concatenate(
        [np.concatenate([order.reshape(2, -1)[w, k * 2 : (k + 1) * 2] for w in range(2)])
         for k in range(plan.steps)]
    )  # fmt: skip
    for epoch in range(3):
        assert sorted(stream[epoch * 8 : (epoch + 1) * 8]) == list(range(8))


def test_schedule_limits_and_errors() -> None:
    assert schedule(100, 2, 8, 1.0, max_steps=3).steps == 3
    with pytest.raises(InputError, match="make no full step"):
        schedule(10, 2, 8, 1.0, None)


def test_pack_positions_point_at_the_logits_that_predict_completions() -> None:
    packed, targets = pack([[5, 6, 7], [8]], [[1, 2], [3, 4, 9]], pad_id=0)
    assert packed.input_ids.tolist() == [[5, 6, 7, 1, 2], [8, 3, 4, 9, 0]]
    assert packed.attention_mask.tolist() == [[1, 1, 1, 1, 1], [1, 1, 1, 1, 0]]
    flat = packed.input_ids.flatten()
    assert flat[packed.positions + 1].tolist() == targets.tolist() == [1, 2, 3, 4, 9]


def test_distill_losses() -> None:
    torch.manual_seed(0)
    student, teacher = torch.randn(6, 10), torch.randn(6, 10)
    subset = torch.tensor([1, 4, 7])
    manual = (
        (F.softmax(teacher[:, subset], -1) * (F.log_softmax(teacher[:, subset], -1)
         - F.log_softmax(student[:, subset], -1))).sum(-1).mean()
    )  # fmt: skip
    assert distill_loss(student, teacher, subset).item() == pytest.approx(manual.item(), rel=1e-5)
    assert distill_loss(teacher, teacher).item() == pytest.approx(0.0, abs=1e-6)
    # a teacher that differs only outside the subset teaches nothing through the subset
    shifted = teacher.clone()
    shifted[:, 9] += 5.0
    assert distill_loss(teacher, shifted, subset).item() == pytest.approx(0.0, abs=1e-6)
    assert distill_loss(teacher, shifted).item() > 0.1
    # temperature: T^2-scaled KL of the softened distributions
    t2 = distill_loss(student, teacher, temperature=2.0)
    soft = F.kl_div(F.log_softmax(student / 2, -1), F.log_softmax(teacher / 2, -1),
                    log_target=True, reduction="batchmean") * 4  # fmt: skip
    assert t2.item() == pytest.approx(soft.item(), rel=1e-5)
    targets = torch.tensor([0, 1, 2, 3, 4, 5])
    assert sft_loss(student, targets).item() == pytest.approx(
        F.cross_entropy(student, targets).item()
    )


def test_lr_schedule_warms_up_then_decays_linearly_to_zero() -> None:
    values = [lr_factor(s, warmup=2, total=10) for s in range(10)]
    assert values[:2] == [0.5, 1.0]
    assert values[2] == 1.0 and values[-1] == pytest.approx(1 / 8)
    assert all(a > b for a, b in itertools.pairwise(values[2:]))


def test_tokenize_cuts_long_completions_and_refuses_no_room() -> None:
    from germline.pipelines.models.tiny import train_tokenizer

    tok = train_tokenizer(["User: say numbers\nAssistant: 1, 2, 3</s>"])
    rows = pa.table({"prompt_id": ["a", "b"], "prompt": ["say numbers"] * 2,
                     "completion": [" 1, 2, 3", " " + ", ".join(["7"] * 100)]})  # fmt: skip
    out = tokenize(rows, tok, max_length=40)
    assert out.truncated == 1
    assert all(
        len(p) + len(c) <= 40 for p, c in zip(out.prompt_ids, out.completion_ids, strict=True)
    )
    assert out.completion_ids[0][-1] == tok.eos_token_id
    table = training_table(out, np.array([1, 0, 1]))
    assert table.column("row").to_pylist() == [1, 0, 1]
    assert table.column("completion_ids")[1].as_py() == out.completion_ids[0]
    with pytest.raises(InputError, match="leaves no room"):
        tokenize(rows, tok, max_length=8)
