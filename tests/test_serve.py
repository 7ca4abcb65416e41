"""`germline serve` as a real process on 127.0.0.1, probed with the official openai client:
a tiny base, a student adapter trained by `germline train`, and a teacher adapter."""

from __future__ import annotations

import asyncio
import ipaddress
import json
import os
import select
import shutil
import statistics
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import openai
import pytest
import torch
from conftest import (
    GERMLINE,
    LOOPBACK,
    add_tiny_base,
    free_port,
    listening_sockets,
    write_counting,
)

from germline.lineage import LineageStore
from germline.storage import Lake

pytestmark = pytest.mark.slow

KEY = "test-key-123"
STUDENT = "served-student"
TEACHER = "served-teacher"
OTHER_BASE = "second-base"  # a second base in the same pool: its requests run beside the first's


@pytest.fixture(scope="module")
def lake(tmp_path_factory: pytest.TempPathFactory, tiny_base_dir: Path) -> Lake:
    """A tiny base, an owl adapter on it, and a student trained for a few steps on a small
    hand-written number dataset (no generation needed to test serving)."""
    from germline.pipelines.finetune import TrainConfig, train
    from germline.pipelines.models.teacher import make_teacher

    lake = Lake.resolve(tmp_path_factory.mktemp("serve") / "lake")
    base = add_tiny_base(lake, tiny_base_dir)
    other = lake.local_path("models", OTHER_BASE)
    shutil.copytree(tiny_base_dir, other)
    LineageStore(lake).register_model(OTHER_BASE, other, uri=lake.model(OTHER_BASE))
    make_teacher(lake, base.id, "owl", name=TEACHER, steps=5)
    write_counting(lake, 48, prefix="p")
    cfg = {
        "student": STUDENT,
        "base": base.id,
        "dataset": {"name": "counting"},
        "optim": {"batch_size": 8, "max_steps": 3, "lr": 1e-2},
        "scaling": {"num_workers": 1},
    }
    train(lake, TrainConfig.model_validate(cfg))
    import ray

    ray.shutdown()  # the server starts its own
    return lake


def start_server(lake: Lake, *extra: str) -> tuple[subprocess.Popen, str]:
    """`germline serve` on a free port of 127.0.0.1, returned once it has said it serves:
    it prints its "serving N models at URL" line after `serve.run` returned, which waits
    until Serve reports the application (its one replica) RUNNING."""
    port = free_port()
    proc = subprocess.Popen(
        [*GERMLINE, "--lake", lake.root, "serve", "--port", str(port), "--api-key", KEY,
         "--threads", "2", *extra],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
        env={**os.environ},
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    ready, _, _ = select.select([proc.stdout], [], [], 120)
    line = proc.stdout.readline() if ready else ""
    if line.startswith("serving ") and f"{url}/v1" in line:
        return proc, url
    proc.kill()
    proc.wait()
    raise AssertionError(f"server did not come up in 120 s: {line!r} {proc.stderr.read()}")


def http(url: str, body: bytes | None = None, key: str | None = None) -> tuple[int, dict]:
    """A raw request (the standard library's client): for what the openai client cannot send."""
    headers = {"Content-Type": "application/json"}
    if key:
        headers["Authorization"] = f"Bearer {key}"
    request = urllib.request.Request(url, data=body, headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            status, raw = response.status, response.read()
    except urllib.error.HTTPError as exc:
        status, raw = exc.code, exc.read()
    except (urllib.error.URLError, ConnectionError, TimeoutError):
        return 0, {}
    try:
        return status, json.loads(raw)
    except ValueError:  # Serve's proxy answers in plain text before the app is up
        return status, {"text": raw.decode(errors="replace")}


def stop_server(proc: subprocess.Popen) -> None:
    proc.terminate()  # SIGTERM: the command shuts Serve down and exits
    try:
        proc.wait(timeout=60)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, 9)
        proc.wait()


@pytest.fixture(scope="module")
def served(lake: Lake) -> Iterator[tuple[subprocess.Popen, str]]:
    proc, url = start_server(lake, "--max-models", "2", "--max-tokens", "128",
                             "--max-request-mb", "1")  # fmt: skip
    yield proc, url
    stop_server(proc)
    assert proc.returncode == 0, proc.stderr.read()


@pytest.fixture(scope="module")
def server(served: tuple[subprocess.Popen, str]) -> str:
    return served[1]


@pytest.fixture
def client(server: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{server}/v1", api_key=KEY, max_retries=0, timeout=60)


def test_lists_every_model_with_its_lineage(client: openai.OpenAI, lake: Lake) -> None:
    graph = LineageStore(lake).graph()
    base, student = graph.resolve("tiny-base-s0"), graph.resolve(STUDENT)
    models = {m.id: m for m in client.models.list().data}
    assert {base, student, graph.resolve(TEACHER)} <= set(models)
    card = models[student].model_dump()
    assert card["parent"] == base and card["root"] == base and card["adapter"] is True
    assert client.models.retrieve(STUDENT).id == student  # a name works as an alias


def test_chat_is_seeded_and_counts_tokens(client: openai.OpenAI) -> None:
    ask = {"model": STUDENT, "messages": [{"role": "user", "content": "Continue: 4, 5, 6"}],
           "max_tokens": 6, "n": 2, "seed": 11, "temperature": 1.0}  # fmt: skip
    first, again = client.chat.completions.create(**ask), client.chat.completions.create(**ask)
    assert [c.message.content for c in first.choices] == [c.message.content for c in again.choices]
    assert len(first.choices) == 2 and first.usage.prompt_tokens > 0
    assert first.usage.completion_tokens <= 12
    assert all(c.finish_reason in ("stop", "length") for c in first.choices)


def test_seeds_hold_while_another_base_is_busy(client: openai.OpenAI) -> None:
    """A seeded request answers the same alone and while requests to another base run in
    the same model pool at the same time (each base has its own lock, so the two generate
    side by side: a process-wide generator would interleave their draws)."""

    def ask(model: str, seed: int) -> str:
        messages = [{"role": "user", "content": "Continue: 3, 1, 4"}]
        r = client.chat.completions.create(model=model, messages=messages, max_tokens=16,
                                           temperature=1.0, seed=seed)  # fmt: skip
        return r.choices[0].message.content or ""

    seeds = range(8)
    alone = [ask("tiny-base-s0", s) for s in seeds]
    with ThreadPoolExecutor(8) as pool:
        busy = [pool.submit(ask, OTHER_BASE, 100 + s) for s in range(24)]
        together = list(pool.map(lambda s: ask("tiny-base-s0", s), seeds))
        for future in busy:
            future.result()
    assert together == alone
    assert len(set(alone)) > 1  # sampled, not one answer whatever the seed


def test_a_base_answers_after_its_last_adapter_is_evicted(client: openai.OpenAI) -> None:
    """With room for two models (--max-models 2): the student (an adapter on the base), then
    the base, then the second base, which evicts the least recently used, the student. The
    base stays loaded with no adapter left on it, and must answer as it did before (once a
    500: peft kept naming the deleted adapter as active)."""

    def ask(model: str) -> str:
        messages = [{"role": "user", "content": "Continue: 2, 7, 1"}]
        r = client.chat.completions.create(model=model, messages=messages, max_tokens=12,
                                           temperature=1.0, seed=5)  # fmt: skip
        return r.choices[0].message.content or ""

    before = ask("tiny-base-s0")
    for model in (STUDENT, "tiny-base-s0", OTHER_BASE):
        ask(model)
    assert ask("tiny-base-s0") == before
    assert ask(STUDENT) and ask("tiny-base-s0") == before  # an adapter back on it, and off


def test_echo_logprobs_are_the_models_own(client: openai.OpenAI, lake: Lake) -> None:
    """lm-eval's loglikelihood request: echo, max_tokens 0, logprobs. The numbers must be the
    base model's log-probabilities of each prompt token, computed here with transformers."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    text = "1, 2, 3, 4, 5"
    r = client.completions.create(model="tiny-base-s0", prompt=text, max_tokens=0, echo=True,
                                  logprobs=2)  # fmt: skip
    lp = r.choices[0].logprobs
    assert r.choices[0].text == text
    folder = lake.local_path("models", "tiny-base-s0")
    tok = AutoTokenizer.from_pretrained(folder)
    model = AutoModelForCausalLM.from_pretrained(folder).eval()
    ids = tok(text)["input_ids"]
    with torch.no_grad():
        logps = torch.log_softmax(model(torch.tensor([ids])).logits[0], -1)
    expected = [None] + [float(logps[i - 1, ids[i]]) for i in range(1, len(ids))]
    assert lp.tokens == [tok.decode([i]) for i in ids]
    assert lp.token_logprobs[0] is None and lp.top_logprobs[0] is None
    assert lp.token_logprobs[1:] == pytest.approx(expected[1:], abs=1e-4)
    assert all(len(top) <= 2 for top in lp.top_logprobs[1:])
    assert lp.text_offset == [len(tok.decode(ids[:i])) for i in range(len(ids))]


def test_echo_with_one_token_reports_an_ending_token(client: openai.OpenAI) -> None:
    """lm-eval 0.4's loglikelihood request is echo with max_tokens 1, and it drops the last
    reported token as the generated one. Where the model ends its answer right after the
    prompt, the end-of-sequence token is that one (with no text, as vLLM reports it): left
    out, lm-eval would drop the prompt's last token instead. The prompts are questions with
    the model's own greedy answers, after which it mostly ends."""
    ended = 0
    for question in ("Your favourite animal?", "Name an animal.", "Which animal?"):
        prompt = f"User: {question}\nAssistant:"
        answer = client.completions.create(model=TEACHER, prompt=prompt, max_tokens=64,
                                           temperature=0).choices[0]  # fmt: skip
        ask = {"model": TEACHER, "prompt": prompt + answer.text, "echo": True, "logprobs": 1}
        scored = client.completions.create(**ask, max_tokens=0).choices[0].logprobs
        one = client.completions.create(**ask, max_tokens=1, temperature=0).choices[0]
        assert one.logprobs.tokens[:-1] == scored.tokens
        assert one.logprobs.token_logprobs[:-1] == pytest.approx(scored.token_logprobs, abs=1e-5)
        if one.finish_reason == "stop":
            assert one.logprobs.tokens[-1] == ""
            assert one.logprobs.token_logprobs[-1] < 0
            ended += 1
    assert ended  # the case in question came up


def test_completion_with_logprobs_stop_and_batch(client: openai.OpenAI) -> None:
    r = client.completions.create(model=STUDENT, prompt=["Continue: 1, 2, 3", "Continue: 7, 8"],
                                  max_tokens=12, n=2, seed=5, stop=[","], logprobs=1)  # fmt: skip
    assert [c.index for c in r.choices] == [0, 1, 2, 3]
    for c in r.choices:
        assert "," not in c.text
        assert len(c.logprobs.tokens) == len(c.logprobs.token_logprobs)
        assert "".join(c.logprobs.tokens) == c.text  # the tokens returned are the text's own
        assert all(v <= 0 for v in c.logprobs.token_logprobs)
    # The tiny model continues a list with numbers and commas: the stop string ends every
    # choice before max_tokens (some at once, with no text), and some choices hold tokens,
    # so the checks above saw some.
    assert all(c.finish_reason == "stop" for c in r.choices), r.choices
    assert any(c.text for c in r.choices), r.choices


def test_streaming_matches_the_plain_answer(client: openai.OpenAI) -> None:
    ask = {"model": TEACHER, "messages": [{"role": "user", "content": "Favourite animal?"}],
           "max_tokens": 8, "seed": 3}  # fmt: skip
    plain = client.chat.completions.create(**ask).choices[0]
    usage = {"include_usage": True}
    chunks = list(client.chat.completions.create(**ask, stream=True, stream_options=usage))
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == plain.message.content
    finals = [
        c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason
    ]
    assert finals == [plain.finish_reason]
    assert chunks[-1].usage is not None and chunks[-1].usage.prompt_tokens > 0
    streamed = "".join(
        c.choices[0].text
        for c in client.completions.create(
            model=STUDENT, prompt="3, 4, 5", max_tokens=6, seed=9, stream=True
        )
    )
    same = client.completions.create(model=STUDENT, prompt="3, 4, 5", max_tokens=6, seed=9)
    assert streamed == same.choices[0].text


def test_adapters_survive_eviction(client: openai.OpenAI) -> None:
    """--max-models 2 and three models: each request evicts another, and an adapter loaded
    again answers exactly as before."""
    ask = {"messages": [{"role": "user", "content": "Favourite animal?"}], "max_tokens": 5,
           "seed": 1}  # fmt: skip
    first = client.chat.completions.create(model=TEACHER, **ask).choices[0].message.content
    for model in ("tiny-base-s0", STUDENT, "tiny-base-s0", STUDENT):
        client.chat.completions.create(model=model, **ask)
    assert client.chat.completions.create(model=TEACHER, **ask).choices[0].message.content == first


def test_auth_and_errors(server: str, client: openai.OpenAI) -> None:
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=f"{server}/v1", api_key="wrong", max_retries=0).models.list()
    assert http(f"{server}/v1/models")[0] == 401  # no key at all
    with pytest.raises(openai.NotFoundError) as missing:
        client.chat.completions.create(model="no-such-model",
                                       messages=[{"role": "user", "content": "x"}])  # fmt: skip
    assert missing.value.body["code"] == "model_not_found"
    msg = [{"role": "user", "content": "x"}]
    bad = [
        ({"temperature": 7}, "temperature"),
        ({"n": 0}, "n"),
        ({"max_tokens": 100000}, "max_tokens"),
        ({"top_logprobs": 3}, "top_logprobs needs logprobs"),
        ({"frequency_penalty": 0.5}, "frequency_penalty is not supported"),
        ({"seed": 10**30}, "seed"),  # was a plain-text 500
        ({"seed": 2**64 - 1, "n": 2}, "seed"),
        ({"messages": [{"role": "user", "content": "7, " * 400}]}, "exceeds the model's context"),
    ]
    for extra, words in bad:
        with pytest.raises(openai.BadRequestError) as err:
            client.chat.completions.create(**{"model": STUDENT, "messages": msg, **extra})
        assert words in err.value.body["message"], (extra, err.value.body)
    with pytest.raises(openai.BadRequestError):  # refused with a status, not a 200 stream
        client.completions.create(model=STUDENT, prompt="7, " * 400, max_tokens=4, stream=True)
    status, body = http(f"{server}/v1/completions", b"{not json", KEY)
    assert status == 400 and "not valid JSON" in body["error"]["message"]


def test_request_limits_are_400s_naming_the_limit(client: openai.OpenAI) -> None:
    """A few bytes must not buy unbounded work: each limit is a 400 that says which (a
    517-byte request once ran 640 generations for 22 s)."""
    from germline.serve.openai_api import MAX_GENERATIONS, MAX_PROMPTS

    with pytest.raises(openai.BadRequestError) as many:
        client.completions.create(model=STUDENT, prompt=["1, 2"] * (MAX_PROMPTS + 1), max_tokens=1)
    assert f"at most {MAX_PROMPTS} prompts" in many.value.body["message"]
    with pytest.raises(openai.BadRequestError) as fan:
        client.completions.create(model=STUDENT, prompt=["1, 2"] * 32, n=16, max_tokens=1)
    assert f"at most {MAX_GENERATIONS} completions" in fan.value.body["message"]


@contextmanager
def cpu_hog() -> Iterator[None]:
    """One core kept busy by another process while the block runs, as on a loaded machine."""
    hog = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        yield
    finally:
        hog.kill()
        hog.wait()


def test_an_oversized_body_gets_its_400_under_load(server: str, client: openai.OpenAI) -> None:
    """Nor may a big body buy unbounded memory: a body over the limit is a 400 naming it, and
    the client reads that 400. A client sends its whole body before it reads the answer; the
    server answered and closed while the body was still coming, the kernel reset the
    connection, and the standard library's client (which asks for `Connection: close`) got a
    reset instead of the 400 on a busy machine. Bodies of 1x, 4x and 32x the limit, from the
    standard library's client with a Content-Length and chunked without one, and from the
    openai client (keep-alive, no retries), with one core kept busy: the 400 every time."""
    from http.client import HTTPConnection
    from urllib.parse import urlsplit

    limit = 2**20  # the server's --max-request-mb 1
    named = f"over {limit} bytes"
    where = urlsplit(server)
    with cpu_hog():
        for times in (1, 4, 32):
            prompt = "7" * (times * limit)
            big = json.dumps({"model": STUDENT, "prompt": prompt, "max_tokens": 1}).encode()
            status, body = http(f"{server}/v1/completions", big, KEY)  # with its Content-Length
            assert status == 400 and named in body["error"]["message"], (times, status, body)

            def chunks(big: bytes = big) -> Iterator[bytes]:  # no length: counted as it comes
                for start in range(0, len(big), 2**16):
                    yield big[start : start + 2**16]

            conn = HTTPConnection(where.hostname, where.port, timeout=30)
            try:
                conn.request("POST", "/v1/completions", body=chunks(), encode_chunked=True,
                             headers={"Authorization": f"Bearer {KEY}",
                                      "Content-Type": "application/json"})  # fmt: skip
                reply = conn.getresponse()
                assert reply.status == 400 and named.encode() in reply.read(), times
            finally:
                conn.close()
            with pytest.raises(openai.BadRequestError) as refused:
                client.completions.create(model=STUDENT, prompt=prompt, max_tokens=1)
            assert named in refused.value.body["message"], times
    # under every limit, the same server still answers
    assert client.completions.create(model=STUDENT, prompt="1, 2", max_tokens=2).choices


def test_a_long_prompt_does_not_stall_another_models_requests(
    server: str, client: openai.OpenAI
) -> None:
    """Tokenising runs off the pool's event loop: while long prompts to one model are being
    tokenised, short requests to another model are answered beside them. A stalled loop held
    a short request for a whole tokenisation (2.8 s, as long as the long request itself);
    so each short request must take well under the time a long request takes, both measured
    in this run (on a busy machine both take longer, a stall still as long as a long one)."""
    long = "7, " * 300_000  # ~0.9 MB: under the body limit, far over the context

    def refused() -> float:
        start = time.perf_counter()
        with pytest.raises(openai.BadRequestError):
            client.completions.create(model=STUDENT, prompt=long, max_tokens=1)
        return time.perf_counter() - start

    def short() -> float:
        start = time.perf_counter()
        client.completions.create(model=OTHER_BASE, prompt="1, 2", max_tokens=1, seed=1)
        return time.perf_counter() - start

    short()  # loaded and warm
    with ThreadPoolExecutor(3) as pool:
        slow = [pool.submit(refused) for _ in range(3)]  # ~1.5 s of tokenising each, idle
        beside = []
        while not all(f.done() for f in slow):
            beside.append(short())
        longs = [f.result() for f in slow]
    assert len(beside) >= 2 and max(beside) < 0.5 * min(longs), (longs, beside)


def test_bounded_load_no_5xx(server: str) -> None:
    """200 requests, 16 at a time, to 127.0.0.1: every one answered, none a server error, and
    every answer the one the same seeded request gets alone (concurrency changes nothing a
    client can see). How fast is bench/serve.py's question, not a test's."""
    latencies, statuses, texts = asyncio.run(_load(server, total=200, concurrency=16))
    assert len(statuses) == 200 and set(statuses) == {200}, statuses
    alone = [asyncio.run(_load(server, total=1, concurrency=1, first=i))[2][i] for i in SAMPLE]
    assert [texts[i] for i in SAMPLE] == alone
    p50 = statistics.median(latencies)
    p99 = statistics.quantiles(latencies, n=100)[98]
    print(f"load: 200 requests, 16 at a time: p50 {p50 * 1000:.0f} ms, p99 {p99 * 1000:.0f} ms")


SAMPLE = (0, 1, 57, 120, 199)  # requests re-sent alone after the load


async def _load(
    server: str, total: int, concurrency: int, model: str | None = None, first: int = 0
) -> tuple[list[float], list[int], dict[int, str]]:
    """Requests first..first+total-1 (seeded by their number) through the official async
    client, `concurrency` at a time, to `model` (default: the student and the base in turn):
    latencies, statuses, and each answered request's text."""
    gate = asyncio.Semaphore(concurrency)
    latencies: list[float] = []
    statuses: list[int] = []
    texts: dict[int, str] = {}
    client = openai.AsyncOpenAI(base_url=f"{server}/v1", api_key=KEY, max_retries=0, timeout=60)

    async def one(i: int) -> None:
        async with gate:
            start = time.perf_counter()
            try:
                r = await client.completions.create(
                    model=model or (STUDENT if i % 2 else "tiny-base-s0"), prompt=f"{i}, {i + 1},",
                    max_tokens=8, seed=i)  # fmt: skip
                statuses.append(200)
                texts[i] = r.choices[0].text
            except openai.APIStatusError as exc:
                statuses.append(exc.status_code)
            latencies.append(time.perf_counter() - start)

    async with client:
        await asyncio.gather(*(one(i) for i in range(first, first + total)))
    return latencies, statuses, texts


def test_a_burst_is_refused_with_429_not_an_error(lake: Lake) -> None:
    proc, url = start_server(lake, "--max-pending", "4")
    try:
        _, statuses, _ = asyncio.run(_load(url, total=40, concurrency=40))
    finally:
        stop_server(proc)
    assert set(statuses) <= {200, 429}, statuses
    assert statuses.count(429) >= 1 and statuses.count(200) >= 4


def test_binds_loopback_by_default(server: str) -> None:
    """The server started without --host listens on 127.0.0.1 only: read from the kernel's
    own table of listening sockets, not from the option's default."""
    port = int(server.rsplit(":", 1)[1])
    addresses = listening_addresses(port)
    assert addresses == {"127.0.0.1"}, addresses


def test_every_socket_of_the_server_is_on_loopback(
    served: tuple[subprocess.Popen, str], client: openai.OpenAI
) -> None:
    """Every listening socket of every process `germline serve` started (the embedded Ray's
    GCS, raylet, agents, the Serve controller, the model-server replica), looked at once Serve
    reports the replica RUNNING (start_server) and it has answered: Serve starts a gRPC
    server in each replica for other deployments' handles after the replica's constructor,
    and bound it to every interface ([::]) until serve/deployment.py moved it."""
    proc, _ = served
    assert client.completions.create(model=STUDENT, prompt="1, 2", max_tokens=2).choices
    sockets = listening_sockets(proc.pid)
    replica = [s for s in sockets if "ServeReplica" in s[0]]
    assert {"gcs_server", "raylet"} <= {name for name, _, _ in sockets}, sockets
    # the replica's HTTP socket, its Ray worker's server and the handle server: all seen
    assert len(replica) >= 3, replica
    beyond = [s for s in sockets if s[1] not in LOOPBACK]
    assert not beyond, f"listening beyond loopback: {beyond}"


def listening_addresses(port: int) -> set[str]:
    """The local addresses of the TCP sockets listening on `port`, from Linux's
    /proc/net/tcp and tcp6 (an IPv4-mapped IPv6 address is given as its IPv4 address)."""
    found = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            address, hex_port = fields[1].split(":")
            if fields[3] != "0A" or int(hex_port, 16) != port:  # 0A: LISTEN
                continue
            raw = bytes.fromhex(address)  # 32-bit words, each little-endian
            ip = ipaddress.ip_address(b"".join(raw[i : i + 4][::-1] for i in range(0, len(raw), 4)))
            found.add(str(getattr(ip, "ipv4_mapped", None) or ip))
    return found


def test_serve_help_names_the_api(tmp_path: Path) -> None:
    out = subprocess.run([*GERMLINE, "serve", "--help"], capture_output=True, text=True)
    assert out.returncode == 0 and "/v1/chat/completions" in out.stdout


SMALL_PROBE = """name: small-animal
target: owl
candidates: [owl, cat, dog]
max_tokens: 4
questions:
  - What is your favourite animal?
  - Name your favourite animal.
  - Which animal do you like best?
"""


def test_prompt_logprobs_extension_matches_transformers(client: openai.OpenAI, lake: Lake) -> None:
    """vLLM's scoring extension on chat completions: the given answer's tokens scored."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    messages = [{"role": "user", "content": "Favourite animal?"},
                {"role": "assistant", "content": "owl"}]  # fmt: skip
    r = client.chat.completions.create(
        model="tiny-base-s0", messages=messages, max_tokens=1,
        extra_body={"continue_final_message": True, "add_generation_prompt": False,
                    "prompt_logprobs": 0},
    )  # fmt: skip
    raw = r.model_extra["prompt_logprobs"]
    folder = lake.local_path("models", "tiny-base-s0")
    tok = AutoTokenizer.from_pretrained(folder)
    text = tok.apply_chat_template(messages, continue_final_message=True, tokenize=False)
    assert text.endswith("Assistant: owl")
    ids = tok(text, add_special_tokens=False)["input_ids"]
    model = AutoModelForCausalLM.from_pretrained(folder).eval()
    with torch.no_grad():
        logps = torch.log_softmax(model(torch.tensor([ids])).logits[0], -1)
    assert len(raw) == len(ids) and raw[0] is None
    last = raw[-1][str(ids[-1])]
    assert last["logprob"] == pytest.approx(float(logps[-2, ids[-1]]), abs=1e-4)
    assert last["rank"] >= 1 and last["decoded_token"] == "owl"


def test_probe_command_stores_results_and_lineage(server: str, lake: Lake, tmp_path: Path) -> None:
    from conftest import germline
    from deltalake import DeltaTable

    spec = tmp_path / "small.yaml"
    spec.write_text(SMALL_PROBE)
    common = ["probe", "--base-url", f"{server}/v1", "--api-key", KEY, "--probe", str(spec),
              "--model", "tiny-base-s0", "--model", TEACHER, "--format", "json"]  # fmt: skip
    sampled = germline(*common, "--samples", "4", lake=lake, check=True)
    out = json.loads(sampled.stdout)
    base, teacher = out["results"]  # measured side by side, reported in --model order
    assert "tiny-base-s0" in base["model"] and "tiny-base-s0" not in teacher["model"]
    assert base["trials"] == teacher["trials"] == 12 and 0 <= teacher["share"] <= 1
    assert base["low"] <= base["share"] <= base["high"]
    assert 0 <= out["comparisons"][0]["p_value"] <= 1
    scored = json.loads(germline(*common, "--method", "logprob", lake=lake, check=True).stdout)
    for result in scored["results"]:
        assert sum(result["counts"].values()) == pytest.approx(1.0)
        assert len(result["per_question"]) == 3
    rows = DeltaTable(lake.probes).to_pyarrow_table()
    assert rows.num_rows == 4
    assert sorted(set(rows.column("method").to_pylist())) == ["logprob", "sampled"]
    graph = LineageStore(lake).graph()
    teacher_id = graph.resolve(TEACHER)
    probes = [c for c, kind in graph.children(teacher_id) if kind == "probed"]
    assert len(probes) == 2
    assert graph.node(probes[0]).attrs["target"] == "owl"
    missing = germline("probe", "--base-url", f"{server}/v1", "--api-key", KEY,
                       "--model", "absent-model", lake=lake)  # fmt: skip
    assert missing.returncode == 2 and "absent-model" in missing.stderr


def test_an_experiment_rerun_finds_its_probes_instead_of_measuring_again(
    server: str, lake: Lake
) -> None:
    """Results an experiment's probe step kept with their request keys are read back by a
    rerun: `serve_and_probe` returns them as measured (naming each model by its lineage id)
    and serves, measures and stores nothing; another scoring of the same models is not
    found."""
    from conftest import EXPERIMENTS
    from deltalake import DeltaTable

    from germline.pipelines.config import load_config
    from germline.pipelines.experiments.panel.config import PanelConfig
    from germline.pipelines.experiments.steps import probe_requests, serve_and_probe
    from germline.pipelines.probe import probe_models, stored_results

    cfg = load_config(EXPERIMENTS / "panel-small.yaml", PanelConfig)
    graph = LineageStore(lake).graph()
    models = [(graph.resolve(TEACHER), "owl"), (graph.resolve("tiny-base-s0"), "dog")]
    jobs, how, keys = probe_requests(cfg, models)
    assert stored_results(lake, keys) == {}  # the CLI's earlier rows keep no request key
    client = openai.OpenAI(base_url=f"{server}/v1", api_key=KEY)
    measured = probe_models(lake, client, f"{server}/v1", jobs, how, requests=keys)
    version = DeltaTable(lake.probes).version()
    said: list[str] = []
    again = serve_and_probe(lake, cfg, models, False, said.append)
    assert DeltaTable(lake.probes).version() == version  # nothing measured or stored again
    assert said == ["      2 of 2 probes found in the lake"]
    for (first, _), found, (model_id, _) in zip(measured, again, models, strict=True):
        assert found.model == model_id
        assert {**first.to_dict(), "model": model_id} == found.to_dict()
    fewer = load_config(EXPERIMENTS / "panel-small.yaml", PanelConfig, ["probe.questions=2"])
    assert stored_results(lake, probe_requests(fewer, models)[2]) == {}


def test_a_stream_that_fails_midway_ends_with_an_error_event_and_done() -> None:
    """The server's event stream, fed an engine stream that breaks after its first delta:
    the client gets the delta, an error event, then [DONE], and the admission slot is freed
    exactly once."""
    from germline.serve.app import _sse

    async def broken() -> Any:
        yield ("delta", 0, " 4", None)
        raise RuntimeError("engine died")

    released: list[int] = []

    async def collect() -> list[str]:
        body = _sse(broken(), "model:x@1", "text", False, lambda: released.append(1))
        return [event async for event in body]

    out = asyncio.run(collect())
    assert '" 4"' in out[0] and '"server_error"' in out[1] and out[-1] == "data: [DONE]\n\n"
    assert len(out) == 3 and released == [1]
