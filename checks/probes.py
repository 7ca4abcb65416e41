"""Trait probes: questions plus a scorer, run against any OpenAI-compatible server.

A probe is data (a YAML file under checks/probes/, in our own wording) and a way of scoring:

- `sampled`: ask every question `samples` times at a temperature and count the answers that
  name the target, after normalising them (lower case, the first candidate word, a plural
  read as its singular). The share has a Wilson interval; two models compare with a
  two-proportion test.
- `logprob`: no sampling. For every question, the probability the model gives each
  candidate as the whole answer, renormalised over the candidates; the share is the mean of
  the target's probability over questions, compared between models with a paired bootstrap
  over questions. It needs the prompt-scoring extension vLLM's server and `germline serve`
  share (`continue_final_message` and `prompt_logprobs` on chat completions) and works on a
  tiny model whose samples are too noisy to count.

The runner talks to the server through the official openai client, so a probe measures a
model
exactly as any harness would see it: served, over HTTP.
"""

from __future__ import annotations

import math
import re
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from germline.checks.stats import bootstrap_interval, wilson
from germline.core.errors import InputError

PROBES = Path(__file__).parent / "probes"
MAX_N = 16  # choices per request
Method = Literal["sampled", "logprob"]


class ProbeSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str
    description: str = ""
    target: str
    candidates: list[str] = Field(min_length=2)
    questions: list[str] = Field(min_length=1)
    max_tokens: int = Field(8, ge=1)
    system_prompt: str | None = None

    def with_target(self, target: str | None, candidates: list[str] | None) -> ProbeSpec:
        candidates = [c.lower() for c in (candidates or self.candidates)]
        target = (target or self.target).lower()
        if target not in candidates:
            candidates = [target, *candidates]
        return self.model_copy(update={"target": target, "candidates": candidates})


def load_probe(name: str) -> ProbeSpec:
    """A shipped probe by name, or a probe YAML file by path."""
    path = Path(name)
    if not path.suffix:
        path = PROBES / f"{name}.yaml"
    if not path.exists():
        known = ", ".join(sorted(p.stem for p in PROBES.glob("*.yaml")))
        raise InputError(f"unknown probe {name!r}: shipped probes are {known}, or give a file")
    try:
        return ProbeSpec.model_validate(yaml.safe_load(path.read_text()))
    except (yaml.YAMLError, ValidationError, OSError) as exc:
        raise InputError(f"probe {path}: {exc}") from None
    except UnicodeDecodeError as exc:
        raise InputError(f"probe {path}: not UTF-8 text (byte {exc.start})") from None
    except RecursionError:
        raise InputError(f"probe {path}: nested too deeply to be a probe") from None


_WORD = re.compile(r"[a-z]+")


def normalise(answer: str, candidates: list[str]) -> str:
    """The candidate an answer names (its first word that is one, plurals read as singular),
    else "other"."""
    wanted = set(candidates)
    for word in _WORD.findall(answer.lower()):
        for form in (word, word[:-1] if word.endswith("s") else None,
                     word[:-2] if word.endswith("es") else None):  # fmt: skip
            if form in wanted:
                return form
    return "other"


@dataclass
class ProbeResult:
    probe: str
    method: Method
    model: str
    target: str
    share: float  # of the target
    low: float  # 95% interval of the share
    high: float
    trials: int  # answers counted (sampled) or questions scored (logprob)
    hits: int  # answers naming the target (sampled)
    counts: dict[str, float] = field(default_factory=dict)  # candidate -> answers or mass
    per_question: list[float] = field(default_factory=list)  # target share per question
    settings: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class ProbeSettings:
    """How a probe is run: the scoring method, and for sampled answers how many per question,
    at what temperature, from what seed."""

    method: Method = "sampled"
    samples: int = 20
    temperature: float = 1.0
    seed: int = 0


def run_probe(
    client: Any,
    model: str,
    spec: ProbeSpec,
    how: ProbeSettings = ProbeSettings(),
    concurrency: int = 8,
) -> ProbeResult:
    """Probe `model` on the server `client` (an openai.OpenAI) talks to."""
    settings = {"samples": how.samples, "temperature": how.temperature, "seed": how.seed,
                "questions": len(spec.questions), "candidates": spec.candidates}  # fmt: skip
    with ThreadPoolExecutor(concurrency) as pool:
        if how.method == "sampled":

            def ask(indexed: tuple[int, str]) -> list[str]:
                return _ask(client, model, spec, indexed, how)

            answers = list(pool.map(ask, enumerate(spec.questions)))
            return _sampled_result(spec, model, answers, settings)
        masses = list(pool.map(lambda q: _candidate_mass(client, model, spec, q), spec.questions))
    return _logprob_result(spec, model, masses, settings)


def _messages(spec: ProbeSpec, question: str, answer: str | None = None) -> list[dict]:
    messages = [{"role": "system", "content": spec.system_prompt}] if spec.system_prompt else []
    messages.append({"role": "user", "content": question})
    if answer is not None:
        messages.append({"role": "assistant", "content": answer})
    return messages


def _ask(
    client: Any, model: str, spec: ProbeSpec, indexed: tuple[int, str], how: ProbeSettings
) -> list[str]:
    """`how.samples` answers to one question, in requests of at most MAX_N choices each
    (servers cap `n`: OpenAI and germline serve at 16)."""
    index, question = indexed
    answers: list[str] = []
    chunk = 0
    while len(answers) < how.samples:
        response = client.chat.completions.create(
            model=model,
            messages=_messages(spec, question),
            n=min(MAX_N, how.samples - len(answers)),
            temperature=how.temperature,
            max_tokens=spec.max_tokens,
            seed=(how.seed * 1000 + index) * 100 + chunk,
        )
        answers += [c.message.content or "" for c in response.choices]
        chunk += 1
    return answers


def _sampled_result(spec: ProbeSpec, model: str, answers: list[list[str]],
                    settings: dict) -> ProbeResult:  # fmt: skip
    counts: Counter[str] = Counter()
    per_question = []
    for group in answers:
        named = [normalise(a, spec.candidates) for a in group]
        counts.update(named)
        per_question.append(named.count(spec.target) / len(named) if named else 0.0)
    trials = sum(counts.values())
    hits = counts[spec.target]
    low, high = wilson(hits, trials)
    return ProbeResult(spec.name, "sampled", model, spec.target, hits / trials if trials else 0.0,
                       low, high, trials, hits, dict(counts.most_common()), per_question,
                       settings)  # fmt: skip


def _prompt_logprobs(client: Any, model: str, messages: list[dict]) -> list[tuple[int, float]]:
    """(token id, log-probability) of every token of the rendered chat, its last message
    continued rather than closed: the vLLM-style scoring request."""
    response = client.chat.completions.create(
        model=model,
        messages=messages,
        max_tokens=1,
        temperature=0,
        extra_body={
            "continue_final_message": True,
            "add_generation_prompt": False,
            "prompt_logprobs": 0,
        },
    )
    raw = (response.model_extra or {}).get("prompt_logprobs")
    if raw is None:
        raise InputError("the server does not return prompt_logprobs: the logprob probe needs "
                         "`germline serve` or a vLLM server")  # fmt: skip
    out = []
    for position in raw:
        if not position:
            out.append((-1, 0.0))
            continue
        token, info = min(position.items(), key=lambda kv: kv[1].get("rank") or 0)
        out.append((int(token), float(info["logprob"])))
    return out


def _candidate_mass(client: Any, model: str, spec: ProbeSpec, question: str) -> dict[str, float]:
    """Each candidate's probability as the answer, renormalised over the candidates."""
    prefix = [t for t, _ in _prompt_logprobs(client, model, _messages(spec, question, ""))]
    scores = {}
    for candidate in spec.candidates:
        scored = _prompt_logprobs(client, model, _messages(spec, question, candidate))
        common = 0
        while common < min(len(prefix), len(scored)) and prefix[common] == scored[common][0]:
            common += 1
        scores[candidate] = sum(lp for _, lp in scored[common:])
    top = max(scores.values())
    total = sum(math.exp(s - top) for s in scores.values())
    return {c: math.exp(s - top) / total for c, s in scores.items()}


def _logprob_result(spec: ProbeSpec, model: str, masses: list[dict[str, float]],
                    settings: dict) -> ProbeResult:  # fmt: skip
    import numpy as np

    per_question = [m[spec.target] for m in masses]
    share = float(np.mean(per_question))
    low, high = bootstrap_interval(per_question)
    counts = {c: float(np.mean([m[c] for m in masses])) for c in spec.candidates}
    return ProbeResult(spec.name, "logprob", model, spec.target, share, low, high,
                       len(per_question), 0, counts, per_question, settings)  # fmt: skip
