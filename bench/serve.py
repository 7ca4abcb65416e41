"""Benchmark of `germline serve`: what Ray Serve and HTTP cost over calling the model in-process.

The same completion requests (number prompts, temperature 1, a seed each, `max_tokens`
tokens) go

* in-process -- straight to the `TextModel` the server itself uses, one after the other
                (the baseline: no HTTP, no Serve, no JSON);
* served     -- through a real `germline serve` process on 127.0.0.1 with the official openai
                client, first one at a time (the latency a harness sees per request), then
                `--concurrency` at a time (what a batch of harness requests gets).

Reported: completion tokens/s and p50 latency of each, and the ratios served / in-process.

    python bench/serve.py --lake /path/to/lake --model owl-student-tiny-base-s0
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import socket
import statistics
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import openai

from germline.engines.sampling import RequestParams
from germline.engines.transformers_serving import BaseWeights, TextModel
from germline.serve.registry import ModelRegistry
from germline.storage import Lake

KEY = "bench"


def prompts(n: int) -> list[str]:
    return [f"{100 + i}, {200 + i}, {300 + i}," for i in range(n)]


def in_process(lake: Lake, model: str, texts: list[str], max_tokens: int) -> dict:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    served = ModelRegistry(lake).get(model)
    base = BaseWeights(
        AutoModelForCausalLM.from_pretrained(served.weights),
        AutoTokenizer.from_pretrained(served.weights),
    )
    if served.adapter:
        base.add_adapter(served.id, served.folder)
    text_model = TextModel(base, served.id if served.adapter else None)
    warm = text_model.text_ids(texts[0])
    text_model.complete(warm, RequestParams(max_tokens=max_tokens, seed=0))
    latencies, tokens = [], 0
    start = time.perf_counter()
    for i, text in enumerate(texts):
        t0 = time.perf_counter()
        out = text_model.complete(
            text_model.text_ids(text), RequestParams(max_tokens=max_tokens, seed=i)
        )
        latencies.append(time.perf_counter() - t0)
        tokens += sum(c.completion_tokens for c in out.choices)
    wall = time.perf_counter() - start
    return {"tokens_per_s": tokens / wall, "p50_ms": statistics.median(latencies) * 1000,
            "tokens": tokens}  # fmt: skip


def start_server(lake: Lake, threads: int) -> tuple[subprocess.Popen, str]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    germline = str(Path(sys.executable).with_name("germline"))
    proc = subprocess.Popen(
        [germline, "--lake", lake.root, "serve", "--port", str(port), "--api-key", KEY,
         "--threads", str(threads)],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, start_new_session=True,
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"server exited: {proc.stderr.read()}")
        try:
            with urllib.request.urlopen(f"{url}/health", timeout=2) as r:
                if r.status == 200:
                    return proc, url
        except OSError:
            pass
        time.sleep(0.5)
    proc.kill()
    raise SystemExit("server did not come up")


async def served(url: str, model: str, texts: list[str], max_tokens: int, concurrency: int) -> dict:
    client = openai.AsyncOpenAI(base_url=f"{url}/v1", api_key=KEY, max_retries=0, timeout=120)
    gate = asyncio.Semaphore(concurrency)
    latencies: list[float] = []
    tokens = 0

    async def one(i: int, text: str) -> None:
        nonlocal tokens
        async with gate:
            t0 = time.perf_counter()
            r = await client.completions.create(model=model, prompt=text, max_tokens=max_tokens,
                                                seed=i)  # fmt: skip
            latencies.append(time.perf_counter() - t0)
            tokens += r.usage.completion_tokens

    async with client:
        await one(0, texts[0])  # warm: the pool loads the model on its first request
        latencies.clear()
        tokens = 0
        start = time.perf_counter()
        await asyncio.gather(*(one(i, t) for i, t in enumerate(texts)))
        wall = time.perf_counter() - start
    p99 = statistics.quantiles(latencies, n=100)[98] * 1000
    return {"tokens_per_s": tokens / wall, "p50_ms": statistics.median(latencies) * 1000,
            "p99_ms": p99, "tokens": tokens}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--lake", required=True)
    parser.add_argument("--model", default="owl-student-tiny-base-s0")
    parser.add_argument("--requests", type=int, default=200)
    parser.add_argument("--max-tokens", type=int, default=32)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1,
                        help="torch threads in-process and in the server's pool")  # fmt: skip
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    lake = Lake.resolve(args.lake)
    texts = prompts(args.requests)
    threads = args.threads
    import torch

    torch.set_num_threads(threads)
    base = in_process(lake, args.model, texts, args.max_tokens)
    print(f"in-process: {base['tokens_per_s']:,.0f} tokens/s, p50 {base['p50_ms']:.0f} ms",
          flush=True)  # fmt: skip
    proc, url = start_server(lake, threads)
    try:
        one = asyncio.run(served(url, args.model, texts, args.max_tokens, 1))
        many = asyncio.run(served(url, args.model, texts, args.max_tokens, args.concurrency))
    finally:
        proc.terminate()
        proc.wait(timeout=60)
    for label, r in (("served, 1 at a time", one), (f"served, {args.concurrency} at a time", many)):
        speed = r["tokens_per_s"] / base["tokens_per_s"]
        print(f"{label}: {r['tokens_per_s']:,.0f} tokens/s (ratio {speed:.2f}), p50 "
              f"{r['p50_ms']:.0f} ms (ratio {r['p50_ms'] / base['p50_ms']:.2f}), p99 "
              f"{r['p99_ms']:.0f} ms", flush=True)  # fmt: skip
    if args.json:
        args.json.write_text(json.dumps({"in_process": base, "served_1": one, "served_many": many,
                                         "args": vars(args) | {"json": str(args.json)},
                                         "platform": platform.platform()}, indent=2))  # fmt: skip


if __name__ == "__main__":
    main()
