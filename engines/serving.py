"""The server's side of the engines: a served model id as something that answers requests.

The HTTP app (serve/) speaks OpenAI; what it needs from an engine is more than the batch
`Engine.generate`: n choices, stop strings, a seed per request, the log-probabilities of the
chosen tokens and their top alternatives, the log-probabilities of the prompt itself (`echo`,
how lm-evaluation-harness scores loglikelihood tasks), and token-by-token streaming. A
`Prompting` is one served model id that does all of that; a `ServingEngine` holds the models
of one server replica on one engine kind, loading each on demand.

Serving engines are registered by name in `SERVING` (`@SERVING.register("vllm")` in a module
of this package whose name ends with `_serving`), like the batch engines in `ENGINES`.
"""

from __future__ import annotations

import threading
from abc import ABC, abstractmethod
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

from germline.core.registry import Registry
from germline.engines.errors import EngineError
from germline.engines.sampling import RequestParams

FinishReason = Literal["stop", "length"]


@dataclass
class TokenLogprob:
    token: str
    token_id: int
    logprob: float | None  # None for the first prompt token: nothing predicts it
    top: list[tuple[str, float]] = field(default_factory=list)
    offset: int = 0  # character offset of the token in the returned text
    rank: int | None = None  # 1 for the likeliest token (prompt scoring only)


@dataclass
class Choice:
    text: str
    finish_reason: FinishReason
    completion_tokens: int
    logprobs: list[TokenLogprob] | None = None


@dataclass
class Completion:
    choices: list[Choice]
    prompt_tokens: int
    prompt_text: str = ""
    prompt_logprobs: list[TokenLogprob] | None = None  # with echo


@dataclass
class Delta:
    """One streamed piece of choice `index`; the last piece of a choice has a finish reason."""

    index: int
    text: str
    finish_reason: FinishReason | None = None
    tokens: int = 0  # completion tokens this piece adds (for the stream's usage)


class Prompting(ABC):
    """How requests become token ids, whatever engine runs them: the chat template (with a
    system-prompt teacher's system prompt first), plain text or given token ids, and the
    check that prompt and completion fit the model's context."""

    tokenizer: Any
    system_prompt: str | None = None
    max_positions: int = 1 << 20

    def chat_ids(
        self,
        messages: list[dict[str, str]],
        add_generation_prompt: bool = True,
        continue_final_message: bool = False,
    ) -> list[int]:
        """The chat as the model sees it; `continue_final_message` leaves the last
        (assistant) message open instead of closing it, which is how a scorer asks for the
        probability of a given answer."""
        if self.tokenizer.chat_template is None:
            raise EngineError("this model has no chat template: use /v1/completions")
        if self.system_prompt and not any(m["role"] == "system" for m in messages):
            messages = [{"role": "system", "content": self.system_prompt}, *messages]
        text = self.tokenizer.apply_chat_template(
            messages,
            add_generation_prompt=add_generation_prompt and not continue_final_message,
            continue_final_message=continue_final_message,
            tokenize=False,
        )
        return self.tokenizer(text, add_special_tokens=False)["input_ids"]

    def text_ids(self, prompt: str | list[int]) -> list[int]:
        if isinstance(prompt, list):
            return prompt
        return self.tokenizer(prompt)["input_ids"]

    def check_length(self, prompt_ids: list[int], max_tokens: int) -> None:
        """EngineError (a 400) when the prompt and the completion do not fit the model."""
        limit = self.max_positions
        if not prompt_ids:
            raise EngineError("the prompt is empty")
        if len(prompt_ids) + max_tokens > limit:
            raise EngineError(
                f"the prompt ({len(prompt_ids)} tokens) plus max_tokens ({max_tokens}) exceeds "
                f"the model's context of {limit} tokens"
            )

    def needs_ensure(self) -> bool:
        """Whether `ensure` has anything to do (checked on the serving loop, cheaply)."""
        return False

    def ensure(self) -> None:
        """Make the model usable again after an eviction raced with this request. Only a
        peft adapter the pool dropped needs anything (see transformers_serving); vLLM reloads its
        LoRA adapters itself."""
        return

    @abstractmethod
    async def acomplete(self, prompt_ids: list[int], params: RequestParams) -> Completion:
        """The whole answer to one prompt (every choice)."""

    @abstractmethod
    def astream(self, prompt_ids: list[int], params: RequestParams) -> AsyncIterator[Delta]:
        """The answer as it is made, choice by choice."""


def blank_end_token(tokens: list[TokenLogprob], ended: bool) -> list[TokenLogprob]:
    """A choice's token log-probabilities, the end-of-sequence token that ended it (`ended`)
    included as the last one with no text, as vLLM's and OpenAI's servers report it: the
    text and `"".join(tokens)` stay equal, and lm-evaluation-harness's loglikelihood request
    (echo, max_tokens 1), which drops the last token as the generated one, keeps the whole
    prompt even where the model would end its answer right after it."""
    if ended and tokens:
        tokens[-1].token = ""
    return tokens


def scoring_only(params: RequestParams) -> list[Choice]:
    """The choices of a request that only scores its prompt (max_tokens 0; lm-evaluation-harness
    0.4 asks with 1 and drops the generated token): n empty ones."""
    return [
        Choice("", "length", 0, [] if params.logprobs is not None else None)
        for _ in range(params.n)
    ]


def token_offsets(tokenizer: Any, ids: list[int]) -> list[int]:
    """Character offset of each token in decode(ids)."""
    return [len(tokenizer.decode(ids[:i])) for i in range(len(ids))]


class ModelSource(Protocol):
    """Where a serving engine gets model folders: the server's view of the lake."""

    def local(self, folder: str) -> str:
        """A model folder (a lake path or URI) as a folder on this node."""
        ...

    def adapters_on(self, weights: str) -> list[str]:
        """The folders of the lake's adapters whose base is `weights`."""
        ...


class ServingEngine(ABC):
    """The models of one server replica on one engine: `load` returns the `Prompting` a
    served model id stands for, building what it needs (a base in memory, an adapter on it).
    What an engine keeps per base weights goes in `bases`, under `lock`."""

    def __init__(
        self,
        source: ModelSource,
        max_models: int,
        threads: int | None = None,
        options: dict[str, Any] | None = None,
    ) -> None:
        self.source = source
        self.max_models = max_models
        self.threads = threads
        self.options = dict(options or {})
        self.bases: dict[str, Any] = {}  # base weights folder -> the engine's state for it
        self.lock = threading.Lock()
        self.setup()

    def setup(self) -> None:
        """What an engine does once, when the replica starts (nothing by default)."""
        return

    @abstractmethod
    async def load(
        self, model_id: str, weights: str, adapter: str | None, system_prompt: str | None
    ) -> Prompting:
        """The model `model_id`: the full model at `weights`, or the adapter folder `adapter`
        on the base at `weights` (lake folders, fetched through `source`)."""


SERVING: Registry[type[ServingEngine]] = Registry(
    "serving engine", "germline.engines", suffix="_serving", error=EngineError
)
