"""The transformers engine's dynamic batching (engines/batching.py): concurrent requests to one
base run as one `generate` call, and a seeded request answers exactly as it does alone."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from germline.engines.batching import Batcher
from germline.engines.sampling import RequestParams


def test_a_batch_takes_the_oldest_request_and_every_waiting_one_with_its_key() -> None:
    """Requests gather while a batch runs; the next batch holds the oldest waiting request and
    the others with its key, up to max_rows rows; a failure reaches every request of its
    batch and no other."""
    calls: list[tuple[str, list[int]]] = []

    def run(key: object, work: list[int]) -> list[int]:
        calls.append((str(key), list(work)))
        if key == "bad":
            raise ValueError("engine failed")
        return [w * 10 for w in work]

    batcher: Batcher[int] = Batcher(run, max_rows=4)

    async def main() -> list[object]:
        asks = [("a", 1, 1), ("b", 1, 2), ("a", 2, 3), ("a", 2, 4), ("bad", 1, 5), ("b", 1, 6)]
        return await asyncio.gather(
            *(batcher.submit(key, rows, work) for key, rows, work in asks), return_exceptions=True
        )

    results = asyncio.run(main())
    assert results[:4] == [10, 20, 30, 40] and results[5] == 60
    assert isinstance(results[4], ValueError)
    # a's first two requests fill 3 of 4 rows; the third (2 rows) waits for a's next batch
    assert calls == [("a", [1, 3]), ("b", [2, 6]), ("a", [4]), ("bad", [5])]
    assert batcher.stats.batches == 4 and batcher.stats.largest == 2


def test_batched_seeded_requests_answer_as_they_do_alone(tiny_base_dir: Path) -> None:
    """Seeded requests with different prompts (so different lengths, left-padded in the
    batch), seeds, n and max_tokens, sampled and greedy, with stop strings and logprobs: sent
    at once they run in a few batches, and each answer (text, finish reason, token count,
    log-probabilities) is the one the request gets run alone."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from germline.engines.transformers_serving import BaseWeights, TextModel

    base = BaseWeights(AutoModelForCausalLM.from_pretrained(tiny_base_dir),
                       AutoTokenizer.from_pretrained(tiny_base_dir))  # fmt: skip
    model = TextModel(base)
    prompts = ["1, 2, 3,", "Continue: 10, 20, 30, 40, 50,", "7,", "User: favourite animal?\nA:",
               "5, 4, 3, 2, 1, 0, 9, 8, 7, 6, 5, 4,", "12, 15, 18,"]  # fmt: skip
    asks = []
    for i, prompt in enumerate(prompts * 2):
        sampled = i % 4 != 3
        params = RequestParams(
            temperature=1.0 if sampled else 0.0,
            max_tokens=8 + 3 * (i % 5),
            seed=100 + 7 * i,
            n=1 + i % 3,
            logprobs=1 if sampled else None,
            stop=(" 9",) if i % 2 else (),
        )
        asks.append((model.text_ids(prompt), params))
    alone = [model.complete(ids, params) for ids, params in asks]

    async def together() -> list:
        return await asyncio.gather(*(model.acomplete(ids, params) for ids, params in asks))

    batched = asyncio.run(together())
    stats = base.batcher.stats
    assert stats.requests == len(asks) and stats.batches < len(asks) and stats.largest >= 3
    for one, many in zip(alone, batched, strict=True):
        assert [c.text for c in many.choices] == [c.text for c in one.choices]
        assert [c.finish_reason for c in many.choices] == [c.finish_reason for c in one.choices]
        assert [c.completion_tokens for c in many.choices] == [
            c.completion_tokens for c in one.choices
        ]
        assert many.prompt_tokens == one.prompt_tokens
        for a, b in zip(one.choices, many.choices, strict=True):
            if a.logprobs is None:
                assert b.logprobs is None
                continue
            assert [t.token for t in b.logprobs] == [t.token for t in a.logprobs]
            assert [t.logprob for t in b.logprobs] == pytest.approx(
                [t.logprob for t in a.logprobs], abs=1e-4
            )
    texts = [c.text for completion in alone for c in completion.choices]
    assert len(set(texts)) > len(texts) // 2  # sampled, seeded apart: mostly different answers
