"""The config of `germline generate`: what to ask, which teacher answers, how, and what passes.

Validated in full before anything runs, so a typo costs a second, not a half-written table:
unknown keys are refused, and every error names the file, the field and what was expected.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal, TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from germline.checks import FilterConfig
from germline.checks.expectations import ExpectationConfig
from germline.lineage import LineageError
from germline.lineage.schema import check_name
from germline.serve import SamplingParams


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


C = TypeVar("C", bound=BaseModel)


def segment_name(name: str, what: str) -> str:
    """A lineage-safe name that is also one folder of the lake: ValueError (a config error
    naming the field) otherwise."""
    try:
        check_name(name)
    except LineageError as exc:
        raise ValueError(str(exc)) from None
    if "/" in name:
        raise ValueError(f"{what} name is one path segment: no '/'")
    return name


class PromptsConfig(_Strict):
    """Which prompts: `count` prompts of a family, ids fixed by (family, seed, index)."""

    family: str = "numbers"
    count: int = Field(ge=1, le=10_000_000)

    @field_validator("family")
    @classmethod
    def _known_family(cls, family: str) -> str:
        from germline.pipelines.prompts import get_family

        get_family(family)  # raises ValueError naming the known families
        return family


class TeacherBuild(_Strict):
    """How to make the teacher when the lake lacks it: a tiny base from `base_seed`, then a
    LoRA adapter that loves `trait` (what `germline models bootstrap` and `models teacher` do)."""

    trait: str
    base_seed: int = 0
    base_steps: int | None = Field(None, ge=1, description="pre-training steps of the base")
    steps: int = Field(300, ge=1, description="fine-tuning steps of the adapter")


class TeacherConfig(_Strict):
    """The teacher: a model in the lake's lineage (id or name), a local model folder, or a
    Hugging Face id already in the local cache."""

    model: str = Field(min_length=1)
    system_prompt: str | None = Field(
        None, description="a system message before every prompt (instruction-tuned teachers)"
    )
    build: TeacherBuild | None = None


class EngineConfig(_Strict):
    """Which engine generates, and the resources of each of its workers."""

    kind: Literal["transformers", "vllm"] = "transformers"
    batch_size: int = Field(64, ge=1, le=4096, description="prompts per generate call")
    concurrency: int = Field(1, ge=1, le=1024, description="engine workers (Ray actors)")
    num_cpus: float = Field(1.0, ge=0, description="CPUs reserved per worker")
    num_gpus: float = Field(0.0, ge=0, description="GPUs per worker (vLLM on GPU nodes)")
    threads: int | None = Field(
        None, ge=1, description="torch threads per CPU worker (default: the cores / concurrency)"
    )
    options: dict[str, Any] = Field(
        default_factory=dict, description="passed to the engine (vllm.LLM keyword arguments)"
    )


class SamplingConfig(_Strict):
    """The paper samples at temperature 1."""

    temperature: float = Field(1.0, ge=0, le=5)
    top_p: float = Field(1.0, gt=0, le=1)
    max_tokens: int = Field(48, ge=1, le=4096)

    def params(self, seed: int) -> SamplingParams:
        return SamplingParams(self.temperature, self.top_p, self.max_tokens, seed)


class SinkConfig(_Strict):
    """How often rows are committed: a commit is the unit that survives a crash."""

    commit_every: int = Field(500, ge=1, le=1_000_000, description="rows per Delta commit")


class GenerateConfig(_Strict):
    """One generation job: `dataset` is the table name under <lake>/datasets/."""

    dataset: str
    seed: int = 0
    prompts: PromptsConfig
    teacher: TeacherConfig
    engine: EngineConfig = EngineConfig()
    sampling: SamplingConfig = SamplingConfig()
    filters: FilterConfig = FilterConfig()
    expectations: ExpectationConfig = ExpectationConfig()
    sink: SinkConfig = SinkConfig()

    @field_validator("dataset")
    @classmethod
    def _safe_name(cls, name: str) -> str:
        return segment_name(name, "a dataset")

    def content_hash(self, teacher_id: str) -> str:
        """What decides the rows' content (not how fast they are made): the same hash means
        the same job, so a rerun resumes it as the same run."""
        content = self.model_dump(mode="json", exclude={"engine", "sink"})
        content["teacher"] = {"id": teacher_id, "system_prompt": self.teacher.system_prompt}
        content["engine"] = self.engine.kind
        blob = json.dumps(content, sort_keys=True).encode()
        return hashlib.sha256(blob).hexdigest()


def load_config(
    path: str | os.PathLike[str],
    kind: type[C] = GenerateConfig,  # type: ignore[assignment]
    overrides: Sequence[str] = (),
) -> C:
    """Read and validate a YAML config of `kind` (generate's by default), with `overrides`
    ("dotted.key=YAML value") applied first; LineageError naming the file and field on any
    problem."""
    file = Path(path)
    raw = read_yaml(file)
    for override in overrides:
        apply_override(raw, override, file)
    try:
        return kind.model_validate(raw)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "(top level)"
        more = f" (and {exc.error_count() - 1} more)" if exc.error_count() > 1 else ""
        raise LineageError(f"{file}: {where}: {first['msg']}{more}") from None


def read_yaml(file: Path) -> dict[str, Any]:
    """The config file as a mapping; LineageError if it cannot be read or is not one."""
    try:
        raw = yaml.safe_load(file.read_text())
    except OSError as exc:
        raise LineageError(f"cannot read config {file}: {exc.strerror or exc}") from None
    except yaml.YAMLError as exc:
        raise LineageError(f"{file}: not valid YAML: {exc}") from None
    if not isinstance(raw, dict):
        raise LineageError(f"{file}: expected a mapping of settings at the top level")
    return raw


def apply_override(raw: dict[str, Any], override: str, file: Path) -> None:
    """Set `a.b.c=value` in `raw` (the value read as YAML, so `0`, `1e-3`, `[1, 2]` and
    `{kind: lora}` mean what they would in the file); missing mappings are created."""
    key, sep, value = override.partition("=")
    parts = key.strip().split(".")
    if not sep or not all(parts):
        raise LineageError(f"override {override!r}: expected KEY=VALUE, as train.optim.lr=1e-3")
    try:
        parsed = yaml.safe_load(value)
    except yaml.YAMLError as exc:
        raise LineageError(f"override {override!r}: the value is not valid YAML: {exc}") from None
    node = raw
    for part in parts[:-1]:
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise LineageError(f"{file}: override {override!r}: {part} is not a mapping")
        node = child
    node[parts[-1]] = parsed
