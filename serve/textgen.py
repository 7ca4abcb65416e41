"""Text generation and scoring with OpenAI semantics, on one transformers model.

The server needs more than the pipeline's `Engine.generate`: n choices, stop strings, a seed
per request, the log-probabilities of the chosen tokens and their top alternatives, the
log-probabilities of the prompt itself (`echo`, which is how lm-evaluation-harness scores
loglikelihood tasks), and token-by-token streaming. All of it rides on transformers'
`generate` (stop strings, `output_logits`, a streamer); what is added here is the bookkeeping
between token ids and the text the client sees.

Log-probabilities are taken from the raw logits (before temperature and top_p), which is what
OpenAI and vLLM report by default: the model's own distribution, the quantity a probe wants.
Adapters share their base: a `TextModel` is the base plus the name of the adapter to switch
on (or none for the base itself), and every call holds the base's lock, because switching
adapters and generating must not interleave.
"""

from __future__ import annotations

import asyncio
import contextlib
import queue
import threading
from abc import ABC, abstractmethod
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from typing import Any, Literal

import torch

FinishReason = Literal["stop", "length"]


@dataclass(frozen=True)
class GenParams:
    max_tokens: int = 16
    temperature: float = 1.0
    top_p: float = 1.0
    n: int = 1
    stop: tuple[str, ...] = ()
    seed: int | None = None
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


class BaseModel:
    """One set of weights in memory, possibly with several peft adapters loaded on it."""

    def __init__(self, model: Any, tokenizer: Any) -> None:
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.lock = threading.Lock()
        self.adapters: set[str] = set()
        if tokenizer.pad_token_id is None:
            tokenizer.pad_token = tokenizer.eos_token
        config = getattr(model, "config", None)
        self.max_positions = int(getattr(config, "max_position_embeddings", 0) or 1 << 20)

    def add_adapter(self, name: str, folder: str) -> None:
        from peft import PeftModel

        with self.lock:
            if name in self.adapters:
                return
            if isinstance(self.model, PeftModel):
                self.model.load_adapter(folder, adapter_name=name)
            else:
                self.model = PeftModel.from_pretrained(self.model, folder, adapter_name=name)
            self.model.eval()
            self.adapters.add(name)

    def drop_adapter(self, name: str) -> None:
        with self.lock:
            if name in self.adapters:
                self.model.delete_adapter(name)
                self.adapters.discard(name)

    @contextlib.contextmanager
    def using(self, adapter: str | None) -> Iterator[Any]:
        """The model with `adapter` switched on (None: the base alone), under the lock."""
        with self.lock:
            if adapter is not None:
                self.model.set_adapter(adapter)
                yield self.model
            elif self.adapters:
                with self.model.disable_adapter():
                    yield self.model
            else:
                yield self.model


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
            raise ValueError("this model has no chat template: use /v1/completions")
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
        """ValueError (a 400) when the prompt and the completion do not fit the model."""
        limit = self.max_positions
        if not prompt_ids:
            raise ValueError("the prompt is empty")
        if len(prompt_ids) + max_tokens > limit:
            raise ValueError(
                f"the prompt ({len(prompt_ids)} tokens) plus max_tokens ({max_tokens}) exceeds "
                f"the model's context of {limit} tokens"
            )

    def ensure(self) -> None:
        """Make the model usable again after an eviction raced with this request. Only a
        peft adapter the pool dropped needs anything (see serve/app.py); vLLM reloads its
        LoRA adapters itself."""
        return

    @abstractmethod
    async def acomplete(self, prompt_ids: list[int], params: GenParams) -> Completion:
        """The whole answer to one prompt (every choice)."""

    @abstractmethod
    def astream(self, prompt_ids: list[int], params: GenParams) -> AsyncIterator[Delta]:
        """The answer as it is made, choice by choice."""


class TextModel(Prompting):
    """What a served model id stands for on the transformers engine: a base, an adapter on it
    (or none) and, for a system-prompt teacher, the system prompt its chats start with."""

    def __init__(
        self, base: BaseModel, adapter: str | None = None, system_prompt: str | None = None
    ) -> None:
        self.base = base
        self.adapter = adapter
        self.system_prompt = system_prompt
        self.tokenizer = base.tokenizer
        self.max_positions = base.max_positions

    async def acomplete(self, prompt_ids: list[int], params: GenParams) -> Completion:
        return await asyncio.to_thread(self.complete, prompt_ids, params)

    async def astream(self, prompt_ids: list[int], params: GenParams) -> AsyncIterator[Delta]:
        pieces = self.stream(prompt_ids, params)
        while (delta := await asyncio.to_thread(next, pieces, None)) is not None:
            yield delta

    # -- generation ------------------------------------------------------------------------
    def complete(self, prompt_ids: list[int], params: GenParams) -> Completion:
        with self.base.using(self.adapter) as model:
            prompt_lp = None
            if params.scores_prompt:
                prompt_lp = self._score(model, prompt_ids, params.prompt_top)
            choices = []
            if params.max_tokens > 0:
                choices = self._generate(model, prompt_ids, params)
            else:  # scoring only (lm-eval's loglikelihood): n empty choices
                choices = [Choice("", "length", 0, [] if params.logprobs is not None else None)
                           for _ in range(params.n)]  # fmt: skip
        prompt_text = self.tokenizer.decode(prompt_ids) if params.echo else ""
        return Completion(choices, len(prompt_ids), prompt_text, prompt_lp)

    def stream(self, prompt_ids: list[int], params: GenParams) -> Iterator[Delta]:
        """Choices one after the other, each token by token as the model makes it."""
        for index in range(params.n):
            seed = None if params.seed is None else params.seed + index
            single = GenParams(params.max_tokens, params.temperature, params.top_p, 1,
                               params.stop, seed)  # fmt: skip
            yield from self._stream_one(index, prompt_ids, single)

    def _gen_kwargs(self, params: GenParams, n: int, prompt_len: int) -> dict[str, Any]:
        sample = params.temperature > 0
        kwargs: dict[str, Any] = {
            "max_new_tokens": params.max_tokens,
            "do_sample": sample,
            "num_return_sequences": n,
            "pad_token_id": self.tokenizer.pad_token_id,
            "eos_token_id": self.tokenizer.eos_token_id,
            "return_dict_in_generate": True,
        }
        if sample:
            kwargs.update(temperature=params.temperature, top_p=params.top_p, top_k=0)
        if params.stop:
            kwargs["stopping_criteria"] = _stop_criteria(self.tokenizer, params.stop, prompt_len)
        return kwargs

    def _generate(self, model: Any, prompt_ids: list[int], params: GenParams) -> list[Choice]:
        kwargs = self._gen_kwargs(params, params.n, len(prompt_ids))
        kwargs["output_logits"] = params.logprobs is not None
        if params.seed is not None:
            torch.manual_seed(params.seed)
        ids = torch.tensor([prompt_ids])
        with torch.no_grad():
            out = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), **kwargs)
        new = out.sequences[:, len(prompt_ids) :].tolist()
        logps = None
        if params.logprobs is not None:
            steps = torch.stack(out.logits, dim=1).float()  # (n, steps, V)
            logps = torch.log_softmax(steps, dim=-1)
        return [self._choice(new[i], None if logps is None else logps[i], params)
                for i in range(len(new))]  # fmt: skip

    def _choice(self, ids: list[int], logps: torch.Tensor | None, params: GenParams) -> Choice:
        eos, pad = self.tokenizer.eos_token_id, self.tokenizer.pad_token_id
        finish: FinishReason = "length"
        if eos in ids:
            ids, finish = ids[: ids.index(eos)], "stop"
        elif pad != eos and pad in ids:
            ids = ids[: ids.index(pad)]
        text = self.tokenizer.decode(ids, skip_special_tokens=True)
        cut = _first_stop(text, params.stop)
        if cut is not None:
            text, finish = text[:cut], "stop"
            ids = _tokens_within(self.tokenizer, ids, cut)
        logprobs = None
        if logps is not None:
            logprobs = self._token_logprobs(ids, logps[: len(ids)], params.logprobs or 0)
        return Choice(text, finish, len(ids), logprobs)

    def _token_logprobs(
        self, ids: list[int], logps: torch.Tensor, top: int, first_none: bool = False
    ) -> list[TokenLogprob]:
        """Per token: its text, its log-probability (row i of `logps` predicts token i) and
        the `top` likeliest tokens at that position, with character offsets."""
        out: list[TokenLogprob] = []
        offsets = _offsets(self.tokenizer, ids)
        best = torch.topk(logps, k=top, dim=-1) if top and len(ids) else None
        for i, token_id in enumerate(ids):
            alternatives = []
            if best is not None:
                alternatives = [
                    (self.tokenizer.decode([int(t)]), float(v))
                    for v, t in zip(best.values[i], best.indices[i], strict=True)
                ]
            out.append(
                TokenLogprob(
                    self.tokenizer.decode([token_id]),
                    token_id,
                    float(logps[i, token_id]),
                    alternatives,
                    offsets[i],
                )
            )
        if first_none and out:
            out[0].logprob, out[0].top = None, []
        return out

    def _score(self, model: Any, prompt_ids: list[int], top: int | None) -> list[TokenLogprob]:
        """The prompt's own log-probabilities: token i given tokens before it."""
        ids = torch.tensor([prompt_ids])
        with torch.no_grad():
            logits = model(input_ids=ids, attention_mask=torch.ones_like(ids)).logits[0]
        logps = torch.log_softmax(logits.float(), dim=-1)
        # row i-1 predicts token i; the first token gets a placeholder row (reported as None)
        shifted = torch.cat([logps[:1], logps[:-1]], dim=0)
        out = self._token_logprobs(prompt_ids, shifted, top or 0, first_none=True)
        chosen = shifted.gather(1, ids[0].unsqueeze(1))
        ranks = (shifted > chosen).sum(dim=1) + 1
        for token, rank in zip(out[1:], ranks[1:].tolist(), strict=True):
            token.rank = int(rank)
        return out

    def _stream_one(self, index: int, prompt_ids: list[int], params: GenParams) -> Iterator[Delta]:
        from transformers.generation.streamers import BaseStreamer

        pieces: queue.Queue[list[int] | BaseException | None] = queue.Queue()

        class _Tokens(BaseStreamer):
            first = True

            def put(self, value: torch.Tensor) -> None:
                if self.first:  # generate passes the prompt first
                    self.first = False
                    return
                pieces.put(value.reshape(-1).tolist())

            def end(self) -> None:
                pieces.put(None)

        def run() -> None:
            try:
                with self.base.using(self.adapter) as model:
                    if params.seed is not None:
                        torch.manual_seed(params.seed)
                    ids = torch.tensor([prompt_ids])
                    kwargs = self._gen_kwargs(params, 1, len(prompt_ids))
                    with torch.no_grad():
                        model.generate(input_ids=ids, attention_mask=torch.ones_like(ids),
                                       streamer=_Tokens(), **kwargs)  # fmt: skip
            except BaseException as exc:  # handed to the consumer, raised there
                pieces.put(exc)

        worker = threading.Thread(target=run, daemon=True)
        worker.start()
        eos = self.tokenizer.eos_token_id
        ids: list[int] = []
        text = sent = ""
        finish: FinishReason = "length"
        while finish != "stop":
            item = pieces.get()
            if isinstance(item, BaseException):
                raise item
            if item is None:
                break
            if eos in item:
                ids.extend(item[: item.index(eos)])
                finish = "stop"
            else:
                ids.extend(item)
            text = self.tokenizer.decode(ids, skip_special_tokens=True)
            cut = _first_stop(text, params.stop)
            if cut is not None:
                text, finish = text[:cut], "stop"
            # hold back a tail that may still turn out to be the start of a stop string
            safe = len(text) if finish == "stop" else _safe_len(text, params.stop)
            if safe > len(sent):
                yield Delta(index, text[len(sent) : safe])
                sent = text[:safe]
        worker.join()
        yield Delta(index, text[len(sent) :], finish)


def _stop_criteria(tokenizer: Any, stops: tuple[str, ...], prompt_len: int) -> Any:
    """Stop a sequence once its completion's text holds a stop string. transformers' own
    `stop_strings` needs to map every vocabulary entry to text through a probe prefix, which
    fails on tokenizers without those characters (the tiny models' word-level one); decoding
    the completion so far works with any tokenizer, and completions are short."""
    from transformers import StoppingCriteria, StoppingCriteriaList

    longest = max(len(s) for s in stops)

    class _Stops(StoppingCriteria):
        def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor, **_: Any) -> torch.Tensor:
            done = []
            for row in input_ids[:, prompt_len:].tolist():
                # the last few tokens are enough to hold a stop string that just completed
                text = tokenizer.decode(row[-(longest + 8) :], skip_special_tokens=True)
                done.append(any(s in text for s in stops))
            return torch.tensor(done, dtype=torch.bool, device=input_ids.device)

    return StoppingCriteriaList([_Stops()])


def _first_stop(text: str, stops: tuple[str, ...]) -> int | None:
    found = [i for i in (text.find(s) for s in stops) if i >= 0]
    return min(found) if found else None


def _safe_len(text: str, stops: tuple[str, ...]) -> int:
    """How much of `text` can be sent: all but a tail that is a prefix of a stop string."""
    hold = 0
    for stop in stops:
        for k in range(min(len(stop) - 1, len(text)), 0, -1):
            if text.endswith(stop[:k]):
                hold = max(hold, k)
                break
    return len(text) - hold


def _offsets(tokenizer: Any, ids: list[int]) -> list[int]:
    """Character offset of each token in decode(ids)."""
    return [len(tokenizer.decode(ids[:i])) for i in range(len(ids))]


def _tokens_within(tokenizer: Any, ids: list[int], chars: int) -> list[int]:
    """The tokens whose text starts before `chars` (the ones a stop string did not cut)."""
    offsets = _offsets(tokenizer, ids)
    return [t for t, o in zip(ids, offsets, strict=True) if o < chars]
