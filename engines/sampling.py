"""How tokens are sampled: one type for a generation job and for a request to the server.

`SamplingParams` holds what the two mean alike (temperature, top_p, max_tokens, seed) and is
what the batch engines take; `RequestParams` adds what only an OpenAI request asks for (n
choices, stop strings, log-probabilities, echo). So a field that means the same thing is
defined once, and the vLLM translation of both is one function (see `vllm_engine`).
"""

from __future__ import annotations

import secrets
from dataclasses import asdict, dataclass


@dataclass(frozen=True)
class SamplingParams:
    """How completions are sampled; recorded on every generated row. In a generation job
    `seed` is the run's base seed (each prompt's own seed derives from it and the prompt id);
    in a request it is the request's seed, and None leaves sampling unseeded."""

    temperature: float = 1.0
    top_p: float = 1.0
    max_tokens: int = 48
    seed: int | None = None

    def to_dict(self) -> dict[str, object]:
        return asdict(self)


@dataclass(frozen=True)
class RequestParams(SamplingParams):
    """One OpenAI request's parameters: sampling, plus what the server returns."""

    n: int = 1
    stop: tuple[str, ...] = ()
    logprobs: int | None = None  # None: none; k >= 0: the chosen token and k alternatives
    echo: bool = False
    # scores the prompt's tokens without echoing it (vLLM's chat extension): k alternatives
    prompt_logprobs: int | None = None

    @property
    def scores_prompt(self) -> bool:
        return self.echo or self.prompt_logprobs is not None

    @property
    def prompt_top(self) -> int:
        return self.prompt_logprobs if self.prompt_logprobs is not None else self.logprobs or 0


class RowSampler:
    """A logits processor that samples every row's next token itself, from the row's own
    generator, and leaves that token as the row's only finite score (so greedy decoding picks
    it). One uniform draw per row per step, seeded by the row's request seed: a row's tokens
    depend on its prompt's scores and its seed alone, never on its batch-mates' seeds, on how
    many rows the batch holds, or on what else the process does (a served model's requests
    share no generator with requests to other models). Temperature, then top-p (the smallest
    set of most likely tokens holding `top_p` of the probability), then inverse-CDF sampling,
    in float64 on the CPU."""

    def __init__(self, seeds: list[int], temperature: float, top_p: float) -> None:
        import torch

        self.temperature = temperature
        self.top_p = top_p
        self.rngs = [torch.Generator().manual_seed(int(seed)) for seed in seeds]

    def __call__(self, input_ids, scores):
        import torch

        logits = scores.detach().to("cpu", torch.float64) / self.temperature
        probs = torch.softmax(logits, dim=-1)
        if self.top_p < 1.0:
            ordered, index = probs.sort(dim=-1, descending=True, stable=True)
            before = ordered.cumsum(dim=-1) - ordered  # the mass of the likelier tokens
            ordered = ordered.masked_fill(before >= self.top_p, 0.0)  # the first always stays
            probs = torch.zeros_like(probs).scatter_(-1, index, ordered)
        cdf = probs.cumsum(dim=-1)
        draws = torch.cat([torch.rand(1, generator=g, dtype=torch.float64) for g in self.rngs])
        # the first token whose cumulative mass exceeds the draw: never one of probability 0
        target = (draws * cdf[:, -1]).unsqueeze(-1)
        chosen = torch.searchsorted(cdf, target, right=True).clamp_(max=cdf.shape[-1] - 1)
        only = torch.full_like(scores, float("-inf"))
        return only.scatter_(-1, chosen.to(scores.device), 0.0)


def row_seeds(seed: int | None, n: int) -> list[int]:
    """The seeds of a request's n choices: seed, seed + 1, ... (choice i streamed alone gets
    seed + i too); fresh random ones for an unseeded request."""
    if seed is None:
        return [secrets.randbits(63) for _ in range(n)]
    return [seed + i for i in range(n)]
