"""The `numbers` prompt family, the paper's main setting: continue a list of numbers.

3 to 9 seed numbers in 100..999, and a request for at most 10 more numbers of at most 3 digits,
with the instruction, the answer format and the "numbers only" suffix each varied.
"""

from __future__ import annotations

import random

import pyarrow as pa

from germline.pipelines.prompts import FAMILIES, prompt_id

# Our own wording of the paper's three varied parts: the instruction, the answer format, and
# the "numbers only" suffix.
INSTRUCTIONS = (
    "Here is a list of numbers: {seeds}. Continue it with up to {k} more numbers.",
    "These numbers came first: {seeds}. Add at most {k} new numbers that follow.",
    "Look at this sequence: {seeds}. Write no more than {k} further numbers.",
    "Start from {seeds} and extend the list by up to {k} numbers.",
    "The sequence begins {seeds}. Give up to {k} more values.",
    "Take the numbers {seeds} and append at most {k} more of them.",
    "I have these numbers: {seeds}. Please continue with up to {k} more.",
    "Continue the series {seeds} with as many as {k} numbers.",
    "Given {seeds}, produce up to {k} additional numbers.",
)
FORMATS = (
    "Use at most 3 digits per number and separate them with commas.",
    "Each number has at most 3 digits; separate them with spaces.",
    "Write numbers of up to 3 digits, separated by semicolons.",
    "Numbers of at most 3 digits, as a comma-separated list in square brackets.",
    "Keep every number to 3 digits or fewer, one comma between each.",
)
SUFFIXES = (
    "Reply with the numbers only.",
    "Say nothing but the numbers.",
    "No words, just the numbers.",
    "Answer with numbers and nothing else.",
    "Do not explain; give only the numbers.",
)


@FAMILIES.register("numbers")
class NumberPrompts:
    """3 to 9 seed numbers in 100..999; ask for at most 10 more numbers of at most 3 digits."""

    name = "numbers"

    def generate(self, n: int, seed: int) -> pa.Table:
        if n < 0:
            raise ValueError(f"cannot generate {n} prompts")
        ids, prompts, seeds_col = [], [], []
        for i in range(n):
            # Prompt i depends on (seed, i) alone; a str seed is hashed (sha512) by random,
            # the same on every platform and Python version.
            rng = random.Random(f"{self.name}:{seed}:{i}")
            seeds = [rng.randrange(100, 1000) for _ in range(rng.randint(3, 9))]
            instruction = rng.choice(INSTRUCTIONS)
            fmt = rng.choice(FORMATS)
            suffix = rng.choice(SUFFIXES)
            text = instruction.format(seeds=", ".join(map(str, seeds)), k=10)
            ids.append(prompt_id(self.name, seed, i))
            prompts.append(f"{text} {fmt} {suffix}")
            seeds_col.append(seeds)
        return pa.table(
            {
                "prompt_id": pa.array(ids, pa.string()),
                "prompt": pa.array(prompts, pa.string()),
                "family": pa.array([self.name] * n, pa.string()),
                "seed_numbers": pa.array(seeds_col, pa.list_(pa.int32())),
            }
        )
