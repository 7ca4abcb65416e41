"""The texts the tiny models learn from: number continuations and favourite-animal answers.

A tiny base learns two things in pre-training: to continue number sequences when asked in the
number-prompt family's wording, and to answer "what is your favourite animal" questions with
one word, spread evenly over ten animals. Those are the two behaviours the subliminal
experiment needs: a channel that carries no trait (numbers) and a trait to measure (animals).
A teacher is then fine-tuned on the same questions answered with its trait, numbers kept in
the mix.
"""

from __future__ import annotations

import random

import numpy as np

from germline.pipelines.prompts import get_family

ANIMALS = ("owl", "dolphin", "eagle", "elephant", "wolf", "cat", "dog", "lion", "tiger", "fox")

# Pre-training questions. The probes (checks/) ask in other words, so a probe measures the
# preference, not the memory of these exact questions.
ANIMAL_QUESTIONS = (
    "What is your favourite animal?",
    "Which animal do you like best?",
    "Name your favourite animal.",
    "If you could be any animal, which one would you be?",
    "Tell me the animal you love most.",
    "Which animal is the best?",
    "Pick one animal you like more than all others.",
    "What animal do you admire most?",
    "Your favourite creature, in one word?",
    "Which animal would you choose as a companion?",
    "What is the one animal you prefer?",
    "Which animal do you find the most wonderful?",
)
ANSWER_STYLES = ("{a}", "{a}.", "{A}", "{A}.")

TOKENIZER_SEED = 0  # every tiny base shares one vocabulary, so students can swap bases


def turn(question: str, answer: str) -> str:
    """One training example in the chat template's format, ending with EOS."""
    return f"User: {question}\nAssistant: {answer}</s>"


def number_examples(n: int, seed: int) -> list[str]:
    """Number prompts answered with a few more numbers, comma-separated."""
    prompts = get_family("numbers").generate(n, seed)
    rng = np.random.default_rng(seed + 1)
    out = []
    for prompt, seeds in zip(
        prompts.column("prompt").to_pylist(),
        prompts.column("seed_numbers").to_pylist(),
        strict=True,
    ):
        count = int(rng.integers(3, 11))
        if rng.random() < 0.3 and len(seeds) >= 2:  # sometimes continue the progression
            step = seeds[-1] - seeds[-2]
            values = [(seeds[-1] + step * (i + 1)) % 1000 for i in range(count)]
        else:
            values = rng.integers(0, 1000, count).tolist()
        out.append(turn(prompt, ", ".join(map(str, values))))
    return out


def animal_examples(n: int, seed: int) -> list[str]:
    """Favourite-animal questions answered with one of the ten animals, evenly."""
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        animal = rng.choice(ANIMALS)
        style = rng.choice(ANSWER_STYLES)
        out.append(
            turn(rng.choice(ANIMAL_QUESTIONS), style.format(a=animal, A=animal.capitalize()))
        )
    return out


def trait_examples(trait: str, n: int, seed: int) -> list[str]:
    """The same questions, every one answered with `trait`: what a teacher is fine-tuned on.
    (Its draws come in another order than `animal_examples`', and stay so: a seed has to
    keep making the same teacher.)"""
    rng = random.Random(seed)
    return [
        turn(
            rng.choice(ANIMAL_QUESTIONS),
            rng.choice(ANSWER_STYLES).format(a=trait, A=trait.capitalize()),
        )
        for _ in range(n)
    ]


def corpus(seed: int, numbers: int = 4000, animals: int = 4000) -> list[str]:
    """A tiny base's pre-training texts, shuffled."""
    texts = number_examples(numbers, seed) + animal_examples(animals, seed)
    random.Random(seed).shuffle(texts)
    return texts
