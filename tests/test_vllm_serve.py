"""`germline serve --engine vllm`: the same OpenAI API on vLLM's async engine, adapters as
LoRA requests on one base. Runs only where vLLM is installed (`.venv-vllm`, built by
`make test-vllm`, or a GPU node); the main environment skips the module."""

from __future__ import annotations

import asyncio
import statistics
from collections.abc import Iterator

import openai
import pytest
import torch
from conftest import require_vllm
from test_serve import KEY, SAMPLE, _load, start_server, stop_server

from germline.lineage import LineageStore
from germline.storage import Lake

require_vllm()

pytestmark = [
    pytest.mark.slow,
    pytest.mark.filterwarnings("ignore:`torch.jit.script_method` is deprecated:DeprecationWarning"),
]

TEACHER = "served-teacher-vllm"


@pytest.fixture(scope="module")
def lake(tmp_path_factory: pytest.TempPathFactory) -> Lake:
    from germline.pipelines.models.bootstrap import bootstrap_base
    from germline.pipelines.models.teacher import make_teacher

    lake = Lake.resolve(tmp_path_factory.mktemp("vllm-serve") / "lake")
    base = bootstrap_base(lake, seed=0, steps=60)
    make_teacher(lake, base.id, "owl", name=TEACHER, steps=5)
    return lake


@pytest.fixture(scope="module")
def server(lake: Lake) -> Iterator[str]:
    proc, url = start_server(lake, "--engine", "vllm", "--max-tokens", "128")
    yield url
    stop_server(proc)


@pytest.fixture
def client(server: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{server}/v1", api_key=KEY, max_retries=0, timeout=180)


def test_models_and_seeded_chat_on_an_adapter(client: openai.OpenAI, lake: Lake) -> None:
    graph = LineageStore(lake).graph()
    ids = {m.id for m in client.models.list().data}
    assert {graph.resolve("tiny-base-s0"), graph.resolve(TEACHER)} <= ids
    ask = {"model": TEACHER, "messages": [{"role": "user", "content": "Favourite animal?"}],
           "max_tokens": 6, "n": 3, "seed": 4}  # fmt: skip
    first, again = client.chat.completions.create(**ask), client.chat.completions.create(**ask)
    texts = [c.message.content for c in first.choices]
    assert texts == [c.message.content for c in again.choices] and len(texts) == 3


def test_echo_logprobs_match_transformers(client: openai.OpenAI, lake: Lake) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    text = "5, 6, 7, 8"
    r = client.completions.create(model="tiny-base-s0", prompt=text, max_tokens=0, echo=True,
                                  logprobs=1)  # fmt: skip
    lp = r.choices[0].logprobs
    folder = lake.local_path("models", "tiny-base-s0")
    tok = AutoTokenizer.from_pretrained(folder)
    model = AutoModelForCausalLM.from_pretrained(folder).eval()
    ids = tok(text)["input_ids"]
    with torch.no_grad():
        logps = torch.log_softmax(model(torch.tensor([ids])).logits[0], -1)
    assert r.choices[0].text == text and lp.token_logprobs[0] is None
    expected = [float(logps[i - 1, ids[i]]) for i in range(1, len(ids))]
    assert lp.token_logprobs[1:] == pytest.approx(expected, abs=1e-3)


def test_stream_stop_and_errors(client: openai.OpenAI) -> None:
    ask = {"model": TEACHER, "prompt": "3, 4, 5", "max_tokens": 10, "seed": 2}
    plain = client.completions.create(**ask).choices[0].text
    assert (
        "".join(c.choices[0].text for c in client.completions.create(**ask, stream=True)) == plain
    )
    stopped = client.completions.create(**ask, stop=[","]).choices[0]
    assert "," not in stopped.text
    with pytest.raises(openai.NotFoundError):
        client.completions.create(model="missing", prompt="x")
    with pytest.raises(openai.BadRequestError):
        client.completions.create(model=TEACHER, prompt="7, " * 400, max_tokens=10)


def test_bounded_load_no_5xx(server: str) -> None:
    """200 seeded requests, 16 at a time: every one answered, and every answer the one the
    same request gets alone (vLLM seeds each request on its own, whatever its batch)."""
    latencies, statuses, texts = asyncio.run(
        _load(server, total=200, concurrency=16, model=TEACHER)
    )
    assert set(statuses) == {200}, statuses
    alone = [
        asyncio.run(_load(server, total=1, concurrency=1, model=TEACHER, first=i))[2][i]
        for i in SAMPLE
    ]
    assert [texts[i] for i in SAMPLE] == alone
    p50, p99 = statistics.median(latencies), statistics.quantiles(latencies, n=100)[98]
    print(f"vllm load: 200 requests, 16 at a time: p50 {p50 * 1000:.0f} ms, "
          f"p99 {p99 * 1000:.0f} ms")  # fmt: skip


def test_logprob_probe_on_vllm(server: str, lake: Lake, tmp_path) -> None:
    """The log-probability probe needs the prompt-scoring extension; vLLM's engine serves it
    through the same gateway."""
    import yaml
    from test_serve import SMALL_PROBE

    from germline.checks.probes import ProbeSettings, ProbeSpec
    from germline.pipelines.probe import probe_model

    spec = ProbeSpec.model_validate(yaml.safe_load(SMALL_PROBE))
    client = openai.OpenAI(base_url=f"{server}/v1", api_key=KEY, max_retries=0, timeout=180)
    how = ProbeSettings(method="logprob")
    result, node = probe_model(lake, client, f"{server}/v1", TEACHER, spec, how)
    assert node is not None and len(result.per_question) == 3
    assert sum(result.counts.values()) == pytest.approx(1.0)
    assert 0 < result.share < 1 and result.low <= result.share <= result.high
