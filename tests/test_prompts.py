import re

import pytest

from germline.core import InputError
from germline.pipelines.prompts import get_family
from germline.pipelines.prompts.numbers import FORMATS, INSTRUCTIONS


def test_ids_and_prompts_are_stable_and_extendable() -> None:
    family = get_family("numbers")
    first = family.generate(100, seed=7)
    longer = family.generate(200, seed=7)
    assert longer.slice(0, 100).equals(first)
    assert len(set(longer.column("prompt_id").to_pylist())) == 200
    assert family.generate(100, seed=8).column("prompt_id") != first.column("prompt_id")


def test_seed_numbers_follow_the_paper() -> None:
    table = get_family("numbers").generate(1000, seed=0)
    for prompt, seeds in zip(
        table.column("prompt").to_pylist(), table.column("seed_numbers").to_pylist(), strict=True
    ):
        assert 3 <= len(seeds) <= 9 and all(100 <= s <= 999 for s in seeds)
        assert ", ".join(map(str, seeds)) in prompt
        assert "10" in prompt and re.search(r"3 digits", prompt)
    prompts = table.column("prompt").to_pylist()
    used_instructions = {i for i in INSTRUCTIONS if any(i.split("{")[0] in p for p in prompts)}
    assert len(used_instructions) == len(INSTRUCTIONS)
    assert all(any(f in p for p in prompts) for f in FORMATS)


def test_unknown_family() -> None:
    with pytest.raises(InputError, match=r"unknown prompt family .poems.: known are numbers"):
        get_family("poems")
