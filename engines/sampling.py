"""How tokens are sampled: one type for a generation job and for a request to the server.

`SamplingParams` holds what the two mean alike (temperature, top_p, max_tokens, seed) and is
what the batch engines take; `RequestParams` adds what only an OpenAI request asks for (n
choices, stop strings, log-probabilities, echo). So a field that means the same thing is
defined once, and the vLLM translation of both is one function (see `vllm_engine`).
"""

from __future__ import annotations

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
