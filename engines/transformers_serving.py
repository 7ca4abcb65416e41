"""The server's transformers engine: OpenAI semantics on transformers models in memory.

All of it rides on transformers' `generate` (stop strings, `output_logits`, a streamer); what
is added here is the bookkeeping between token ids and the text the client sees.

Log-probabilities are taken from the raw logits (before temperature and top_p), which is what
OpenAI and vLLM report by default: the model's own distribution, the quantity a probe wants.
Adapters share their base: a `TextModel` is the base's weights plus the name of the adapter to
switch on (or none for the base itself), and every call holds the base's lock, because
switching adapters and generating must not interleave. Concurrent generation requests to one
base wait for its next batch and run together as one `generate` call (engines/batching.py),
each row still sampled from its own request's seed. A replica keeps each base in memory
while a model on it is loaded, and drops it when the last one is evicted.
"""

from __future__ import annotations

import asyncio
import contextlib
import queue
import threading
from collections.abc import AsyncIterator, Iterator
from dataclasses import replace
from typing import TYPE_CHECKING, Any

from germline.engines.batching import Batcher
from germline.engines.sampling import RequestParams, RowSampler, row_seeds
from germline.engines.serving import (
    SERVING,
    Choice,
    Completion,
    Delta,
    FinishReason,
    Prompting,
    ServingEngine,
    TokenLogprob,
    blank_end_token,
    scoring_only,
    token_offsets,
)

if TYPE_CHECKING:
    import torch


class BaseWeights:
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
        # concurrent generation requests on this base, run a batch at a time (engines/batching)
        self.batcher: Batcher[Completion] = Batcher(_run_batch, max_rows=BATCH_ROWS)

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
                if not self.adapters:
                    # A peft model with no adapter left still names the deleted one as
                    # active, and generate() then fails on it (a request to the base after
                    # its last adapter was evicted got a 500): back to the plain base.
                    self.model = self.model.unload().eval()

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


class TextModel(Prompting):
    """What a served model id stands for on the transformers engine: a base, an adapter on it
    (or none) and, for a system-prompt teacher, the system prompt its chats start with."""

    def __init__(
        self, base: BaseWeights, adapter: str | None = None, system_prompt: str | None = None
    ) -> None:
        self.base = base
        self.adapter = adapter
        self.system_prompt = system_prompt
        self.tokenizer = base.tokenizer
        self.max_positions = base.max_positions

    async def acomplete(self, prompt_ids: list[int], params: RequestParams) -> Completion:
        """A generation request waits for the base's next batch (engines/batching); one that
        scores its prompt runs on its own."""
        if params.scores_prompt or params.max_tokens <= 0:
            return await asyncio.to_thread(self.complete, prompt_ids, params)
        key = (self.adapter, params.temperature, params.top_p, params.stop,
               params.logprobs is not None)  # fmt: skip
        return await self.base.batcher.submit(key, params.n, (self, prompt_ids, params))

    async def astream(self, prompt_ids: list[int], params: RequestParams) -> AsyncIterator[Delta]:
        pieces = self.stream(prompt_ids, params)
        while (delta := await asyncio.to_thread(next, pieces, None)) is not None:
            yield delta

    # -- generation ------------------------------------------------------------------------
    def complete(self, prompt_ids: list[int], params: RequestParams) -> Completion:
        with self.base.using(self.adapter) as model:
            prompt_lp = None
            if params.scores_prompt:
                prompt_lp = self._score(model, prompt_ids, params.prompt_top)
            choices = []
            if params.max_tokens > 0:
                choices = self._generate(model, prompt_ids, params)
            else:  # scoring only (lm-eval's loglikelihood)
                choices = scoring_only(params)
        prompt_text = self.tokenizer.decode(prompt_ids) if params.echo else ""
        return Completion(choices, len(prompt_ids), prompt_text, prompt_lp)

    def complete_many(self, requests: list[tuple[list[int], RequestParams]]) -> list[Completion]:
        """Several generation requests with the same sampling rules as one `generate` call:
        a row per choice, each with its own seed, prompts left-padded to the longest, run to
        the largest max_tokens; each row then keeps its own request's first max_tokens."""
        import torch

        rows = [ids for ids, params in requests for _ in range(params.n)]
        seeds = [s for _, params in requests for s in row_seeds(params.seed, params.n)]
        first = requests[0][1]
        width = max(len(r) for r in rows)
        pad = self.tokenizer.pad_token_id
        ids = torch.tensor([[pad] * (width - len(r)) + r for r in rows])
        mask = torch.tensor([[0] * (width - len(r)) + [1] * len(r) for r in rows])
        longest = max(params.max_tokens for _, params in requests)
        kwargs = self._gen_kwargs(replace(first, max_tokens=longest), seeds, width)
        kwargs["output_logits"] = first.logprobs is not None
        with self.base.using(self.adapter) as model, torch.no_grad():
            out = model.generate(input_ids=ids, attention_mask=mask, **kwargs)
        new = out.sequences[:, width:].tolist()
        logps = None
        if first.logprobs is not None:
            logps = torch.log_softmax(torch.stack(out.logits, dim=1).float(), dim=-1)
        completions, row = [], 0
        for prompt_ids, params in requests:
            choices = []
            for _ in range(params.n):
                steps = None if logps is None else logps[row, : params.max_tokens]
                choices.append(self._choice(new[row][: params.max_tokens], steps, params))
                row += 1
            completions.append(Completion(choices, len(prompt_ids)))
        return completions

    def stream(self, prompt_ids: list[int], params: RequestParams) -> Iterator[Delta]:
        """Choices one after the other, each token by token as the model makes it."""
        for index in range(params.n):
            seed = None if params.seed is None else params.seed + index
            single = RequestParams(
                temperature=params.temperature,
                top_p=params.top_p,
                max_tokens=params.max_tokens,
                seed=seed,
                stop=params.stop,
            )
            yield from self._stream_one(index, prompt_ids, single)

    def _gen_kwargs(self, params: RequestParams, seeds: list[int], prompt_len: int) -> dict:
        """generate's arguments for len(seeds) rows of one prompt. Sampling draws each row's
        tokens from the row's own generator (`RowSampler`), never from torch's process-wide
        one, which requests to other models served by this process would also be drawing
        from: a seeded request then answers the same whatever else is being served."""
        kwargs: dict[str, Any] = {
            "max_new_tokens": params.max_tokens,
            "do_sample": False,
            "pad_token_id": self.tokenizer.pad_token_id,
            "eos_token_id": self.tokenizer.eos_token_id,
            "return_dict_in_generate": True,
        }
        if params.temperature > 0:
            kwargs["logits_processor"] = [RowSampler(seeds, params.temperature, params.top_p)]
        if params.stop:
            kwargs["stopping_criteria"] = _stop_criteria(self.tokenizer, params.stop, prompt_len)
        return kwargs

    def _generate(self, model: Any, prompt_ids: list[int], params: RequestParams) -> list[Choice]:
        import torch

        kwargs = self._gen_kwargs(params, row_seeds(params.seed, params.n), len(prompt_ids))
        kwargs["output_logits"] = params.logprobs is not None
        ids = torch.tensor([prompt_ids] * params.n)  # one row per choice, each its own seed
        with torch.no_grad():
            out = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), **kwargs)
        new = out.sequences[:, len(prompt_ids) :].tolist()
        logps = None
        if params.logprobs is not None:
            steps = torch.stack(out.logits, dim=1).float()  # (n, steps, V)
            logps = torch.log_softmax(steps, dim=-1)
        return [self._choice(new[i], None if logps is None else logps[i], params)
                for i in range(len(new))]  # fmt: skip

    def _choice(self, ids: list[int], logps: torch.Tensor | None, params: RequestParams) -> Choice:
        eos, pad = self.tokenizer.eos_token_id, self.tokenizer.pad_token_id
        finish: FinishReason = "length"
        ended = eos in ids
        if ended:
            ids, finish = ids[: ids.index(eos)], "stop"
        elif pad != eos and pad in ids:
            ids = ids[: ids.index(pad)]
        text = self.tokenizer.decode(ids, skip_special_tokens=True)
        cut = _first_stop(text, params.stop)
        if cut is not None:
            text, finish, ended = text[:cut], "stop", False
            ids = _tokens_within(self.tokenizer, ids, cut)
        logprobs = None
        if logps is not None:
            scored = [*ids, eos] if ended else ids
            logprobs = blank_end_token(
                self._token_logprobs(scored, logps[: len(scored)], params.logprobs or 0), ended
            )
        return Choice(text, finish, len(ids), logprobs)

    def _token_logprobs(
        self, ids: list[int], logps: torch.Tensor, top: int, first_none: bool = False
    ) -> list[TokenLogprob]:
        """Per token: its text, its log-probability (row i of `logps` predicts token i) and
        the `top` likeliest tokens at that position, with character offsets."""
        import torch

        out: list[TokenLogprob] = []
        offsets = token_offsets(self.tokenizer, ids)
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
        import torch

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

    def _stream_one(
        self, index: int, prompt_ids: list[int], params: RequestParams
    ) -> Iterator[Delta]:
        import torch
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
                    ids = torch.tensor([prompt_ids])
                    kwargs = self._gen_kwargs(params, row_seeds(params.seed, 1), len(prompt_ids))
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
        reported = 0  # tokens the deltas sent so far stand for
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
                yield Delta(index, text[len(sent) : safe], tokens=len(ids) - reported)
                sent, reported = text[:safe], len(ids)
        worker.join()
        total = len(_tokens_within(self.tokenizer, ids, len(text))) if ids else 0
        yield Delta(index, text[len(sent) :], finish, max(0, total - reported))


BATCH_ROWS = 64  # rows (choices) one generate call takes at most


def _run_batch(_key: object, work: list[tuple[TextModel, list[int], RequestParams]]) -> list:
    """A batch of requests that share an adapter and sampling rules (the batch's key)."""
    model = work[0][0]
    return model.complete_many([(ids, params) for _, ids, params in work])


def _stop_criteria(tokenizer: Any, stops: tuple[str, ...], prompt_len: int) -> Any:
    """Stop a sequence once its completion's text holds a stop string. transformers' own
    `stop_strings` needs to map every vocabulary entry to text through a probe prefix, which
    fails on tokenizers without those characters (the tiny models' word-level one); decoding
    the completion so far works with any tokenizer, and completions are short."""
    import torch
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


def _tokens_within(tokenizer: Any, ids: list[int], chars: int) -> list[int]:
    """The tokens whose text starts before `chars` (the ones a stop string did not cut)."""
    offsets = token_offsets(tokenizer, ids)
    return [t for t, o in zip(ids, offsets, strict=True) if o < chars]


class _Loaded(TextModel):
    """A model the replica holds: the pool's LRU (serve/pool.py) drops its last reference
    when it evicts the model, and __del__ then frees the adapter and, with its last user, the
    base's weights."""

    def __init__(
        self, engine: TransformersServing, base: BaseWeights, weights: str, model_id: str,
        adapter_folder: str | None, system_prompt: str | None,
    ) -> None:  # fmt: skip
        super().__init__(base, model_id if adapter_folder else None, system_prompt)
        self._engine, self._weights, self._folder = engine, weights, adapter_folder
        self._released = False

    def needs_ensure(self) -> bool:
        return self.adapter is not None and self.adapter not in self.base.adapters

    def ensure(self) -> None:
        """An adapter evicted while this request waited is put back before use."""
        if self.needs_ensure():
            assert self._folder is not None
            self.base.add_adapter(self.adapter, self._engine.source.local(self._folder))

    def __del__(self) -> None:
        if not self._released:
            self._released = True
            self._engine.release(self._weights, self.adapter, self.base)


@SERVING.register("transformers")
class TransformersServing(ServingEngine):
    """Bases loaded once per replica and shared by the models on them; adapters loaded onto
    their base on demand (peft) and dropped when the pool evicts their model."""

    def setup(self) -> None:
        self._users: dict[str, int] = {}  # models loaded on each base
        if self.threads:
            import torch

            torch.set_num_threads(self.threads)

    async def load(
        self, model_id: str, weights: str, adapter: str | None, system_prompt: str | None
    ) -> Prompting:
        base = await asyncio.to_thread(self._base, weights)
        model = _Loaded(self, base, weights, model_id, adapter, system_prompt)
        if adapter is not None:
            folder = await asyncio.to_thread(self.source.local, adapter)
            await asyncio.to_thread(base.add_adapter, model_id, folder)
        return model

    def _base(self, weights: str) -> BaseWeights:
        with self.lock:
            if weights not in self.bases:
                from transformers import AutoModelForCausalLM, AutoTokenizer

                local = self.source.local(weights)
                self.bases[weights] = BaseWeights(
                    AutoModelForCausalLM.from_pretrained(local),
                    AutoTokenizer.from_pretrained(local),
                )
            self._users[weights] = self._users.get(weights, 0) + 1
            return self.bases[weights]

    def release(self, weights: str, adapter: str | None, base: BaseWeights) -> None:
        if adapter is not None:
            base.drop_adapter(adapter)
        with self.lock:
            self._users[weights] -= 1
            if self._users[weights] <= 0:  # nothing uses these weights any more
                self.bases.pop(weights, None)
                self._users.pop(weights, None)
