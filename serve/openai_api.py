"""The OpenAI wire format: request validation and response bodies, apart from any server.

Requests are validated here, so a bad parameter is a 400 naming the parameter before any
model is touched. Fields the API defines but germline does not implement are refused when set
to anything but their neutral value (a penalty of 0 is fine, 0.5 is a 400), never silently
ignored; fields that do not change the output (`user`, `metadata`) are accepted.
"""

from __future__ import annotations

import time
import uuid
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from germline.engines.sampling import RequestParams
from germline.engines.serving import Choice, Completion, TokenLogprob

MAX_N = 16
MAX_LOGPROBS = 20
MAX_STOPS = 4
# A completion request's batch: at most MAX_PROMPTS prompts and MAX_GENERATIONS completions
# (prompts x n). One request holds one admission slot, so without a cap a few hundred bytes
# could ask for hundreds of generations and hold the pool for seconds.
MAX_PROMPTS = 128
MAX_GENERATIONS = 256
# A request's seeds are seed .. seed + n - 1, and a torch generator takes a signed 64-bit seed.
MIN_SEED, MAX_SEED = -(2**63), 2**63 - MAX_N


class _Request(BaseModel):
    model_config = ConfigDict(extra="allow")

    model: str = Field(min_length=1)
    temperature: float = Field(1.0, ge=0, le=2)
    top_p: float = Field(1.0, gt=0, le=1)
    n: int = Field(1, ge=1, le=MAX_N)
    stop: str | list[str] | None = None
    seed: int | None = Field(None, ge=MIN_SEED, le=MAX_SEED)
    stream: bool = False
    stream_options: dict[str, Any] | None = None
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    logit_bias: dict[str, float] | None = None

    @field_validator("stop")
    @classmethod
    def _stops(cls, stop: str | list[str] | None) -> str | list[str] | None:
        stops = [stop] if isinstance(stop, str) else stop or []
        if len(stops) > MAX_STOPS:
            raise ValueError(f"at most {MAX_STOPS} stop sequences")
        if any(not s for s in stops):
            raise ValueError("a stop sequence cannot be empty")
        return stop

    @model_validator(mode="after")
    def _unsupported(self) -> _Request:
        for name in ("presence_penalty", "frequency_penalty"):
            if getattr(self, name) != 0:
                raise ValueError(f"{name} is not supported (only 0)")
        if self.logit_bias:
            raise ValueError("logit_bias is not supported")
        return self

    @property
    def stops(self) -> tuple[str, ...]:
        return (self.stop,) if isinstance(self.stop, str) else tuple(self.stop or ())

    def _params(self, **specific: Any) -> RequestParams:
        """The request's parameters: the fields every request has, plus its own."""
        return RequestParams(
            temperature=self.temperature,
            top_p=self.top_p,
            n=self.n,
            stop=self.stops,
            seed=self.seed,
            **specific,
        )

    @property
    def include_usage(self) -> bool:
        return bool((self.stream_options or {}).get("include_usage"))


class TextPart(BaseModel):
    type: Literal["text"]
    text: str


class Message(BaseModel):
    model_config = ConfigDict(extra="allow")

    role: Literal["system", "developer", "user", "assistant"]
    content: str | list[TextPart] | None = None

    def plain(self) -> dict[str, str]:
        content = self.content
        if isinstance(content, list):
            content = "".join(p.text for p in content)
        role = "system" if self.role == "developer" else self.role
        return {"role": role, "content": content or ""}


class ChatRequest(_Request):
    messages: list[Message] = Field(min_length=1)
    max_tokens: int | None = Field(None, ge=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    logprobs: bool = False
    top_logprobs: int | None = Field(None, ge=0, le=MAX_LOGPROBS)
    # vLLM's chat extensions for scoring a given answer
    add_generation_prompt: bool = True
    continue_final_message: bool = False
    prompt_logprobs: int | None = Field(None, ge=0, le=MAX_LOGPROBS)

    @model_validator(mode="after")
    def _top_needs_logprobs(self) -> ChatRequest:
        if self.top_logprobs and not self.logprobs:
            raise ValueError("top_logprobs needs logprobs: true")
        if self.continue_final_message and self.messages[-1].role != "assistant":
            raise ValueError("continue_final_message needs an assistant message last")
        if self.stream and self.prompt_logprobs is not None:
            raise ValueError("prompt_logprobs with stream is not supported")
        return self

    def params(self, default_max: int) -> RequestParams:
        return self._params(
            max_tokens=self.max_completion_tokens or self.max_tokens or default_max,
            logprobs=(self.top_logprobs or 0) if self.logprobs else None,
            prompt_logprobs=self.prompt_logprobs,
        )


class CompletionRequest(_Request):
    prompt: str | list[str] | list[int] | list[list[int]]
    max_tokens: int = Field(16, ge=0)
    logprobs: int | None = Field(None, ge=0, le=MAX_LOGPROBS)
    echo: bool = False
    suffix: str | None = None
    best_of: int | None = None

    @model_validator(mode="after")
    def _checks(self) -> CompletionRequest:
        if self.suffix:
            raise ValueError("suffix is not supported")
        if self.best_of not in (None, 1, self.n):
            raise ValueError("best_of is not supported (only equal to n)")
        if self.max_tokens == 0 and not self.echo:
            raise ValueError("max_tokens 0 returns nothing without echo")
        if self.stream and self.echo:
            raise ValueError("echo with stream is not supported")
        if not self.prompts:
            raise ValueError("prompt is empty")
        if len(self.prompts) > MAX_PROMPTS:
            raise ValueError(f"at most {MAX_PROMPTS} prompts per request")
        if len(self.prompts) * self.n > MAX_GENERATIONS:
            raise ValueError(f"at most {MAX_GENERATIONS} completions per request (prompts x n)")
        return self

    @property
    def prompts(self) -> list[str | list[int]]:
        p = self.prompt
        if isinstance(p, str):
            return [p]
        if p and all(isinstance(x, int) for x in p):
            return [list(p)]  # type: ignore[arg-type]
        return list(p)  # type: ignore[arg-type]

    def params(self) -> RequestParams:
        return self._params(max_tokens=self.max_tokens, logprobs=self.logprobs, echo=self.echo)


# -- responses -------------------------------------------------------------------------------


def new_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:24]}"


def error_body(message: str, kind: str, param: str | None = None, code: str | None = None) -> dict:
    return {"error": {"message": message, "type": kind, "param": param, "code": code}}


def usage(prompt: int, completion: int) -> dict[str, int]:
    return {"prompt_tokens": prompt, "completion_tokens": completion,
            "total_tokens": prompt + completion}  # fmt: skip


def _chat_logprobs(tokens: list[TokenLogprob] | None) -> dict | None:
    if tokens is None:
        return None

    def entry(token: str, logprob: float) -> dict:
        return {"token": token, "logprob": logprob, "bytes": list(token.encode())}

    return {
        "content": [
            {**entry(t.token, t.logprob or 0.0), "top_logprobs": [entry(a, v) for a, v in t.top]}
            for t in tokens
        ]
    }


def prompt_logprobs_body(tokens: list[TokenLogprob] | None) -> list[dict | None] | None:
    """vLLM's format: per prompt token, None for the first, else {token id: {logprob, rank,
    decoded_token}} for the token itself and its top alternatives."""
    if tokens is None:
        return None
    out: list[dict | None] = [None]
    for t in tokens[1:]:
        entry = {str(t.token_id): {"logprob": t.logprob, "rank": t.rank, "decoded_token": t.token}}
        out.append(entry)
    return out


def _envelope(kind: str, response_id: str, model: str, choices: list[dict]) -> dict:
    """What every response body and streamed chunk starts with."""
    return {
        "id": response_id,
        "object": kind,
        "created": int(time.time()),
        "model": model,
        "choices": choices,
    }


def chat_body(model: str, completion: Completion) -> dict:
    choices = [
        {
            "index": i,
            "message": {"role": "assistant", "content": c.text},
            "logprobs": _chat_logprobs(c.logprobs),
            "finish_reason": c.finish_reason,
        }
        for i, c in enumerate(completion.choices)
    ]
    return {
        **_envelope("chat.completion", new_id("chatcmpl"), model, choices),
        "usage": usage(
            completion.prompt_tokens, sum(c.completion_tokens for c in completion.choices)
        ),
        **(
            {"prompt_logprobs": prompt_logprobs_body(completion.prompt_logprobs)}
            if completion.prompt_logprobs is not None
            else {}
        ),
    }


def _text_logprobs(choice: Choice, completion: Completion, echo: bool) -> dict | None:
    if choice.logprobs is None:
        return None
    tokens = list(completion.prompt_logprobs or []) if echo else []
    shift = len(completion.prompt_text) if echo else 0
    generated = [
        TokenLogprob(t.token, t.token_id, t.logprob, t.top, t.offset + shift)
        for t in choice.logprobs
    ]
    tokens += generated
    return {
        "tokens": [t.token for t in tokens],
        "token_logprobs": [t.logprob for t in tokens],
        "top_logprobs": [dict(t.top) if t.logprob is not None else None for t in tokens],
        "text_offset": [t.offset for t in tokens],
    }


def completion_body(model: str, completions: list[Completion], echo: bool) -> dict:
    choices = []
    prompt_tokens = completion_tokens = 0
    for completion in completions:
        prompt_tokens += completion.prompt_tokens
        for c in completion.choices:
            completion_tokens += c.completion_tokens
            choices.append(
                {
                    "index": len(choices),
                    "text": (completion.prompt_text if echo else "") + c.text,
                    "logprobs": _text_logprobs(c, completion, echo),
                    "finish_reason": c.finish_reason,
                }
            )
    return {
        **_envelope("text_completion", new_id("cmpl"), model, choices),
        "usage": usage(prompt_tokens, completion_tokens),
    }


def chat_chunk(stream_id: str, model: str, index: int, delta: dict, finish: str | None) -> dict:
    choice = {"index": index, "delta": delta, "logprobs": None, "finish_reason": finish}
    return _envelope("chat.completion.chunk", stream_id, model, [choice])


def text_chunk(stream_id: str, model: str, index: int, text: str, finish: str | None) -> dict:
    choice = {"index": index, "text": text, "logprobs": None, "finish_reason": finish}
    return _envelope("text_completion", stream_id, model, [choice])
