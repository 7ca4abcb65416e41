"""Trait-neutral prompt families: the inputs a teacher completes.

A family turns (n, seed) into a table of prompts with stable ids, so a resumed or extended run
asks the same questions under the same ids: prompt i depends only on (family, seed, i), never
on n. Each family is one module of this package, registered by name in `FAMILIES`
(`numbers` is the paper's main setting); a code or maths family is one new file.
"""

from __future__ import annotations

import hashlib
from typing import Protocol

import pyarrow as pa

from germline.core import Registry


class PromptFamily(Protocol):
    """A source of prompts. `generate(n, seed)` returns columns prompt_id, prompt, family (and
    whatever else the family keeps about each prompt)."""

    name: str

    def generate(self, n: int, seed: int) -> pa.Table: ...


FAMILIES: Registry[type[PromptFamily]] = Registry("prompt family", "germline.pipelines.prompts")


def get_family(name: str) -> PromptFamily:
    """The family registered as `name` (InputError naming the known ones otherwise)."""
    return FAMILIES.get(name)()


def prompt_id(family: str, seed: int, index: int) -> str:
    """Prompt `index` of `family` under `seed`: the same id in every run that asks it."""
    digest = hashlib.sha256(f"{family}:{seed}:{index}".encode()).hexdigest()
    return f"{family[:3]}-{digest[:16]}"
