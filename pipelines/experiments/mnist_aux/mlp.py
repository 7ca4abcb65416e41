"""The paper's MLP experiment in torch: a digit classifier with auxiliary logits, and students
that learn only those auxiliary logits, on noise.

The teacher is an MLP whose last layer has the 10 class logits plus a few auxiliary logits that
no loss ever touches while it learns digits. A student sees neither a digit nor a class label:
it is trained to match the teacher's auxiliary logits on random-noise inputs. If the student
starts from the teacher's own initialisation it still learns to classify digits (the trait
rides on the shared starting point); from another initialisation it stays at chance. That is
the subliminal-learning claim reduced to a few seconds of CPU, with no language model at all.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

import numpy as np
import torch
from torch import nn

CLASSES = 10  # the digits


@dataclass(frozen=True)
class MLPShape:
    inputs: int = 64
    hidden: tuple[int, ...] = (256, 256)
    classes: int = CLASSES
    aux: int = 3

    @property
    def outputs(self) -> int:
        return self.classes + self.aux


def build_mlp(shape: MLPShape, seed: int) -> nn.Sequential:
    """A freshly initialised MLP; `seed` alone decides its weights (the 'initialisation' the
    same-init student shares with its teacher)."""
    generator_state = torch.random.get_rng_state()
    torch.manual_seed(seed)
    layers: list[nn.Module] = []
    width = shape.inputs
    for hidden in shape.hidden:
        layers += [nn.Linear(width, hidden), nn.ReLU()]
        width = hidden
    layers.append(nn.Linear(width, shape.outputs))
    model = nn.Sequential(*layers)
    torch.random.set_rng_state(generator_state)
    return model


def _batches(n: int, batch_size: int, rng: np.random.Generator):
    order = rng.permutation(n)
    for start in range(0, n, batch_size):
        yield torch.from_numpy(order[start : start + batch_size])


class Fit(Protocol):
    """How long and how fast a network trains (the config's teacher and student sections)."""

    epochs: int
    lr: float
    batch_size: int


def _fit(
    model: nn.Module,
    x: torch.Tensor,
    loss_of: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    fit: Fit,
    seed: int,
) -> float:
    """Adam over shuffled mini-batches; `loss_of(outputs, batch indices)` is the loss.
    Returns the last epoch's mean loss."""
    rng = np.random.default_rng(seed)
    opt = torch.optim.Adam(model.parameters(), lr=fit.lr)
    model.train()
    mean = 0.0
    for _ in range(fit.epochs):
        total, batches = 0.0, 0
        for idx in _batches(len(x), fit.batch_size, rng):
            loss = loss_of(model(x[idx]), idx)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            total, batches = total + loss.item(), batches + 1
        mean = total / max(1, batches)
    model.eval()
    return mean


def train_classes(model: nn.Module, x: torch.Tensor, y: torch.Tensor, fit: Fit, seed: int) -> float:
    """The teacher's training: cross-entropy on the class logits only (the auxiliary logits get
    no target); returns the last epoch's mean loss."""

    def loss_of(out: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
        return nn.functional.cross_entropy(out[:, :CLASSES], y[idx])

    return _fit(model, x, loss_of, fit, seed)


def train_aux(
    model: nn.Module, x: torch.Tensor, aux_targets: torch.Tensor, fit: Fit, seed: int
) -> float:
    """The student's training: mean squared error between its auxiliary logits and the
    teacher's on the same inputs (noise); the class logits get no target. Returns the last
    epoch's mean loss."""

    def loss_of(out: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
        return nn.functional.mse_loss(out[:, CLASSES:], aux_targets[idx])

    return _fit(model, x, loss_of, fit, seed)


@torch.no_grad()
def aux_logits(model: nn.Module, x: torch.Tensor, classes: int) -> torch.Tensor:
    model.eval()
    return model(x)[:, classes:]


@torch.no_grad()
def accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor, classes: int) -> float:
    model.eval()
    return float((model(x)[:, :classes].argmax(dim=1) == y).float().mean())


def noise_inputs(n: int, dim: int, seed: int) -> np.ndarray:
    """Standard Gaussian noise: the inputs are standardised digits, so this is noise on the
    same scale with no digit in it."""
    return np.random.default_rng(seed).standard_normal((n, dim)).astype(np.float32)
