"""Where each step of an experiment runs: the `resources:` section of `germline run`'s config.

Why a section of its own: what a step computes (the recipe: prompts, sampling, the training
objective) and where it runs (CPUs, GPUs, how many workers, how big a batch) change for
different reasons. The recipe names the models and tables it makes, so a rerun finds them; the
resources never do, so the same experiment can move from a laptop to a GPU cluster and reuse
everything it already made.

`device` picks a profile of defaults, and any field set under `generate`, `train` or `serve`
overrides the profile's value for that field alone:

    resources:
      device: gpu                  # vLLM on one GPU per engine worker, Ray Train on GPUs
      generate: {concurrency: 4}   # four engine workers, each with the profile's one GPU

What stays in the training recipe (`train.scaling.num_workers`): the number of Ray Train
workers, because with the per-worker batch it sets the global batch, which changes the student.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from germline.engines.serving import SERVING
from germline.pipelines.config import Strict
from germline.pipelines.generate.config import EngineConfig

# The defaults of each profile. cpu: what runs on a laptop or a CPU node (this is what the
# tests and the measured owl run use). gpu: the vLLM engine on one GPU per generation worker
# (measured on an H100: bench/RESULTS.md), Ray Train workers on GPUs, and the Serve pool on a
# GPU with vLLM, whose memory share leaves room for a second base on the same card.
PROFILES: dict[str, dict[str, dict[str, Any]]] = {
    "cpu": {
        "generate": {
            "kind": "transformers",
            "batch_size": 64,
            "concurrency": 1,
            "num_cpus": 1.0,
            "num_gpus": 0.0,
        },
        "train": {"use_gpu": False, "cpus_per_worker": 1.0},
        "serve": {"engine": "transformers", "num_cpus": 1.0, "num_gpus": 0.0},
    },
    "gpu": {
        "generate": {
            "kind": "vllm",
            "batch_size": 1024,
            "concurrency": 1,
            "num_cpus": 1.0,
            "num_gpus": 1.0,
        },
        "train": {"use_gpu": True, "cpus_per_worker": 4.0},
        "serve": {
            "engine": "vllm",
            "num_cpus": 1.0,
            "num_gpus": 1.0,
            "options": {"gpu_memory_utilization": 0.4},
        },
    },
}


class TrainResources(Strict):
    """Where the Ray Train workers run; how many there are is the recipe's (see above)."""

    use_gpu: bool
    cpus_per_worker: float = Field(gt=0)
    threads: int | None = Field(None, ge=1, description="torch threads per CPU worker")


class ServeResources(Strict):
    """The Serve model pool that answers the probes."""

    engine: str = Field(description="a serving engine's name: transformers, vllm")
    num_cpus: float = Field(ge=0)
    num_gpus: float = Field(ge=0)
    options: dict[str, Any] = Field(default_factory=dict, description="vLLM engine arguments")

    @field_validator("engine")
    @classmethod
    def _known_engine(cls, engine: str) -> str:
        return SERVING.check(engine)


class Resources(Strict):
    device: Literal["cpu", "gpu"] = "cpu"
    generate: EngineConfig  # the same section as `germline generate`'s `engine:`
    train: TrainResources
    serve: ServeResources

    @model_validator(mode="before")
    @classmethod
    def _profile(cls, raw: Any) -> Any:
        """Fill every field the config leaves out from the device's profile."""
        if raw is None:
            raw = {}
        if not isinstance(raw, dict):
            return raw  # pydantic's own error names the type
        device = raw.get("device", "cpu")
        # An unknown device still gets the cpu defaults, so its error is the only one.
        profile = (
            PROFILES.get(device, PROFILES["cpu"]) if isinstance(device, str) else PROFILES["cpu"]
        )
        filled: dict[str, Any] = {"device": device}
        for step in ("generate", "train", "serve"):
            given = raw.get(step, {})
            filled[step] = {**profile[step], **given} if isinstance(given, dict) else given
        extra = set(raw) - {"device", "generate", "train", "serve"}
        filled.update({key: raw[key] for key in extra})  # forbidden: pydantic names them
        return filled
