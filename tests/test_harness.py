"""The README's eval-harness commands ("Serving models to eval harnesses") run as a shell runs
them, against a real `germline serve` on a lake made here: lm-evaluation-harness and
inspect_ai from their own environment (.venv-harness, built by `make test-harness`; its bin
folder in GERMLINE_HARNESS_BIN), their results checked against germline's own numbers. The
main environment has neither harness and skips the module."""

from __future__ import annotations

import json
import math
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import openai
import pytest
from test_serve import KEY, start_server, stop_server

from germline.storage import Lake

HARNESS_BIN = Path(os.environ.get("GERMLINE_HARNESS_BIN", "/nonexistent"))
CLIS = ("lm_eval", "inspect")
if os.environ.get("GERMLINE_REQUIRE_HARNESS") == "1":  # make test-harness: missing fails the run
    assert all((HARNESS_BIN / c).exists() for c in CLIS), f"no lm_eval, inspect in {HARNESS_BIN}"
elif not all((HARNESS_BIN / c).exists() for c in CLIS):
    pytest.skip("the eval harnesses live in .venv-harness (make test-harness)",
                allow_module_level=True)  # fmt: skip

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]

ROOT = Path(__file__).resolve().parent.parent
STUDENT = "harness-teacher"  # an adapter on the tiny base, as the README's student is


@pytest.fixture(scope="module")
def lake(tmp_path_factory: pytest.TempPathFactory) -> Lake:
    from germline.pipelines.models.bootstrap import bootstrap_base
    from germline.pipelines.models.teacher import make_teacher

    lake = Lake.resolve(tmp_path_factory.mktemp("harness") / "lake")
    base = bootstrap_base(lake, seed=0, steps=60)
    make_teacher(lake, base.id, "owl", name=STUDENT, steps=5)
    import ray

    ray.shutdown()  # the server starts its own
    return lake


@pytest.fixture(scope="module")
def server(lake: Lake) -> Iterator[str]:
    proc, url = start_server(lake)
    yield url
    stop_server(proc)


@pytest.fixture
def client(server: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{server}/v1", api_key=KEY, max_retries=0, timeout=60)


def _home() -> set[str]:
    home = Path.home()
    return {str(p) for p in home.glob("*")} | {str(p) for p in home.glob("*/*")}


def harness(tmp: Path, *argv: str, **env: str) -> subprocess.CompletedProcess:
    """A harness CLI from .venv-harness as a shell runs it, from the repository root, with
    nothing reaching beyond 127.0.0.1 (the hub and dataset downloads off, any other HTTP sent
    to a closed port) and every cache, state and data folder in `tmp`, not in the home folder
    (which this checks)."""
    isolated = {
        "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "HF_HOME": str(tmp / "hf"),
        "HF_DATASETS_CACHE": str(tmp / "hf" / "datasets"), "XDG_CACHE_HOME": str(tmp / "cache"),
        "XDG_DATA_HOME": str(tmp / "data"), "XDG_CONFIG_HOME": str(tmp / "config"),
        "XDG_STATE_HOME": str(tmp / "state"), "HTTP_PROXY": "http://127.0.0.1:9",
        "HTTPS_PROXY": "http://127.0.0.1:9", "NO_PROXY": "127.0.0.1,localhost",
        "TOKENIZERS_PARALLELISM": "false", "DO_NOT_TRACK": "1",
    }  # fmt: skip
    before = _home()
    ran = subprocess.run(
        [str(HARNESS_BIN / argv[0]), *argv[1:]], cwd=ROOT, capture_output=True, text=True,
        env={**os.environ, **isolated, **env}, timeout=180,
    )  # fmt: skip
    assert ran.returncode == 0, f"{argv[0]} failed:\n{ran.stdout[-3000:]}\n{ran.stderr[-3000:]}"
    assert _home() == before, f"{argv[0]} wrote to the home folder: {_home() - before}"
    return ran


def test_lm_eval_loglikelihood_equals_the_logprob_probe(
    server: str, lake: Lake, client: openai.OpenAI, tmp_path: Path
) -> None:
    """lm-eval's animal_mc (loglikelihood through /v1/completions with echo) picks, for every
    question, the choice germline's logprob probe gives the most mass, and the two agree on
    every choice's share. The scored texts are the same: lm-eval scores the choice after
    "Assistant:" and its target delimiter, one space, exactly the chat template's rendering
    of the choice as the assistant's answer that the probe scores (checked below). lm-eval's
    sum also holds that space's log-probability, the same for every choice, so the shares
    (each choice's probability over the choices) compare, not the raw sums."""
    from transformers import AutoTokenizer

    from germline.checks.probes import ProbeSettings, ProbeSpec, run_probe

    tokenizer = lake.local_path("models", "tiny-base-s0")
    harness(tmp_path, "lm_eval", "--model", "local-completions",
            "--include_path", "experiments/harness",
            "--model_args", f"model={STUDENT},base_url={server}/v1/completions,"
            f"tokenized_requests=False,tokenizer={tokenizer},tokenizer_backend=huggingface",
            "--tasks", "animal_mc", "--output_path", str(tmp_path / "out"), "--log_samples",
            OPENAI_API_KEY=KEY)  # fmt: skip
    results = json.loads(next((tmp_path / "out").rglob("results_*.json")).read_text())
    logged = next((tmp_path / "out").rglob("samples_animal_mc_*.jsonl")).read_text()
    samples = [json.loads(line) for line in logged.splitlines()]
    assert len(samples) == 12

    template = AutoTokenizer.from_pretrained(tokenizer)
    shares = {}
    for question in {s["doc"]["question"] for s in samples}:
        spec = ProbeSpec(name="animal_mc", target="owl", questions=[question],
                         candidates=samples[0]["doc"]["choices"])  # fmt: skip
        shares[question] = run_probe(client, STUDENT, spec, ProbeSettings(method="logprob")).counts
    hits = []
    for sample in samples:
        doc, choices = sample["doc"], sample["doc"]["choices"]
        for i, choice in enumerate(choices):
            scored = sample["arguments"][f"gen_args_{i}"]
            rendered = template.apply_chat_template(
                [{"role": "user", "content": doc["question"]},
                 {"role": "assistant", "content": choice}],
                continue_final_message=True, tokenize=False,
            )  # fmt: skip
            assert scored["arg_0"] + scored["arg_1"] == rendered
        sums = [float(r[0][0]) for r in sample["resps"]]
        top = max(sums)
        total = sum(math.exp(s - top) for s in sums)
        probe = [shares[doc["question"]][c] for c in choices]
        assert [math.exp(s - top) / total for s in sums] == pytest.approx(probe, abs=1e-4)
        assert max(probe) - min(probe) > 1e-3  # the choices are told apart: a real check
        picked = probe.index(max(probe))
        assert sample["acc"] == float(picked == doc["answer"])
        hits.append(picked == doc["answer"])
    assert results["results"]["animal_mc"]["acc,none"] == pytest.approx(sum(hits) / len(hits))


def test_inspect_scores_are_the_served_answers(
    server: str, client: openai.OpenAI, tmp_path: Path
) -> None:
    """inspect's animal task through its OpenAI-compatible provider: every sample's answer is
    what the server answers when asked the request inspect sent (seeded, so the same), and
    its score is `includes()`'s verdict on that answer."""
    logs = tmp_path / "logs"
    harness(tmp_path, "inspect", "eval", "experiments/harness/animal_inspect.py",
            "--model", f"openai-api/germline/{STUDENT}", "--log-dir", str(logs),
            "--log-format", "json", "--display", "plain",
            GERMLINE_BASE_URL=f"{server}/v1", GERMLINE_API_KEY=KEY)  # fmt: skip
    log = json.loads(next(logs.glob("*.json")).read_text())
    assert log["status"] == "success" and len(log["samples"]) == 6
    verdicts = []
    for sample in log["samples"]:
        (call,) = [e["call"] for e in sample["events"] if e["event"] == "model"]
        unsent = ("extra_headers", "tools", "tool_choice")
        sent = {k: v for k, v in call["request"].items() if v is not None and k not in unsent}
        calls = sample["events_data"]["calls"]
        sent[call["call_key"]] = [m for a, b in call["call_refs"] for m in calls[a:b]]
        assert sent["seed"] == 7 and sent["max_tokens"] == 8
        assert sent["messages"] == [{"role": "user", "content": sample["input"]}]
        answer = sample["output"]["completion"]
        assert client.chat.completions.create(**sent).choices[0].message.content == answer
        verdict = "C" if "owl" in answer.lower() else "I"
        assert sample["scores"]["includes"]["value"] == verdict
        verdicts.append(verdict == "C")
    assert len({s["output"]["completion"] for s in log["samples"]}) > 1  # six answers, not one
    (score,) = log["results"]["scores"]
    assert score["metrics"]["accuracy"]["value"] == pytest.approx(sum(verdicts) / len(verdicts))


def test_lm_eval_generation_is_the_served_answer(
    server: str, client: openai.OpenAI, tmp_path: Path
) -> None:
    """lm-eval's animal_gen (greedy generation through /v1/chat/completions, the README's
    second command): every answer it logged is what the server answers to the chat it sent,
    and its exact_match is the task's rule applied to that answer."""
    harness(tmp_path, "lm_eval", "--model", "local-chat-completions", "--apply_chat_template",
            "--model_args", f"model={STUDENT},base_url={server}/v1/chat/completions",
            "--include_path", "experiments/harness", "--tasks", "animal_gen",
            "--output_path", str(tmp_path / "out"), "--log_samples",
            OPENAI_API_KEY=KEY)  # fmt: skip
    results = json.loads(next((tmp_path / "out").rglob("results_*.json")).read_text())
    logged = next((tmp_path / "out").rglob("samples_animal_gen_*.jsonl")).read_text()
    samples = [json.loads(line) for line in logged.splitlines()]
    assert len(samples) == 12
    hits = []
    for sample in samples:
        (sent,) = sample["arguments"]["gen_args_0"]["arg_0"]  # the chat it sent, as JSON
        messages = json.loads(sent)
        assert messages == [{"role": "user", "content": sample["doc"]["question"]}]
        served = client.chat.completions.create(
            model=STUDENT, messages=messages, temperature=0, max_tokens=8, stop=["\n"]
        ).choices[0].message.content  # fmt: skip
        assert sample["resps"][0][0] == served
        answer = "".join(c for c in served.lstrip().lower() if c.isalnum() or c.isspace())
        hit = answer == sample["doc"]["target"]
        assert sample["exact_match"] == float(hit)
        hits.append(hit)
    assert results["results"]["animal_gen"]["exact_match,strip"] == pytest.approx(
        sum(hits) / len(hits)
    )
