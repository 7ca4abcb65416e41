"""The config of `germline generate`: what to ask, which teacher answers, how, and what passes.

Validated in full before anything runs (see pipelines/config.py): unknown keys are refused,
and every error names the file, the field and what was expected.
"""

from __future__ import annotations

from typing import Any

from pydantic import Field, field_validator

from germline.checks import FilterConfig
from germline.checks.expectations import ExpectationConfig
from germline.engines import ENGINES, SamplingParams
from germline.pipelines.config import DatasetName, Strict, digest
from germline.pipelines.models.teacher import TeacherConfig
from germline.pipelines.prompts import FAMILIES


class PromptsConfig(Strict):
    """Which prompts: `count` prompts of a family, ids fixed by (family, seed, index)."""

    family: str = "numbers"
    count: int = Field(ge=1, le=10_000_000)

    @field_validator("family")
    @classmethod
    def _known_family(cls, family: str) -> str:
        return FAMILIES.check(family)  # an InputError (a ValueError) names the known ones


class EngineConfig(Strict):
    """Which engine generates, and the resources of each of its workers."""

    kind: str = Field("transformers", description="an engine's name: transformers, vllm")
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

    @field_validator("kind")
    @classmethod
    def _known_engine(cls, kind: str) -> str:
        return ENGINES.check(kind)


class SamplingConfig(Strict):
    """The paper samples at temperature 1."""

    temperature: float = Field(1.0, ge=0, le=5)
    top_p: float = Field(1.0, gt=0, le=1)
    max_tokens: int = Field(48, ge=1, le=4096)

    def params(self, seed: int) -> SamplingParams:
        return SamplingParams(self.temperature, self.top_p, self.max_tokens, seed)


class SinkConfig(Strict):
    """How often rows are committed: a commit is the unit that survives a crash."""

    commit_every: int = Field(500, ge=1, le=1_000_000, description="rows per Delta commit")


class GenerateConfig(Strict):
    """One generation job: `dataset` is the table name under <lake>/datasets/."""

    dataset: DatasetName
    seed: int = 0
    prompts: PromptsConfig
    teacher: TeacherConfig
    engine: EngineConfig = EngineConfig()
    sampling: SamplingConfig = SamplingConfig()
    filters: FilterConfig = FilterConfig()
    expectations: ExpectationConfig = ExpectationConfig()
    sink: SinkConfig = SinkConfig()

    def content_hash(self, teacher_id: str) -> str:
        """What decides the rows' content (not how fast they are made): the same hash means
        the same job, so a rerun resumes it as the same run."""
        content = self.model_dump(mode="json", exclude={"engine", "sink"})
        content["teacher"] = {"id": teacher_id, "system_prompt": self.teacher.system_prompt}
        content["engine"] = self.engine.kind
        return digest(content)
