"""`germline audit --engine vllm`: vLLM's prompt log-probabilities give the audit the same
scores as the transformers path, from one engine with the teacher's adapter on and off.

Runs only where vLLM is installed (`.venv-vllm`, which `make test-vllm` builds, or a GPU node);
the main environment skips the module.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from conftest import require_vllm, training_data_config
from deltalake import DeltaTable

from germline.pipelines.audit import audit
from germline.pipelines.generate import GenerateConfig, generate
from germline.storage import Lake

require_vllm()

pytestmark = [
    pytest.mark.slow,
    pytest.mark.filterwarnings("ignore:`torch.jit.script_method` is deprecated:DeprecationWarning"),
    pytest.mark.filterwarnings("ignore::DeprecationWarning:ray.data.context"),
]

TEACHER = "owl-teacher-vllm-audit"


@pytest.fixture(scope="module")
def lake(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lake]:
    """A tiny base, an owl adapter on it and 48 of its number completions (transformers)."""
    import ray

    from germline.pipelines.cluster import ensure_ray
    from germline.pipelines.models.bootstrap import bootstrap_base
    from germline.pipelines.models.teacher import make_teacher

    lake = Lake.resolve(tmp_path_factory.mktemp("vllm-audit") / "lake")
    base = bootstrap_base(lake, seed=0, steps=60)
    make_teacher(lake, base.id, "owl", name=TEACHER, steps=20)
    ensure_ray()
    generate(lake, GenerateConfig.model_validate(training_data_config(TEACHER, 48, 48)))
    yield lake
    ray.shutdown()


def test_vllm_scores_match_the_transformers_scores(lake: Lake) -> None:
    plain = audit(lake, "numbers", transfer_rows=0)
    fast = audit(lake, "numbers", transfer_rows=0, engine="vllm")
    assert fast.audit_id != plain.audit_id and fast.rows == plain.rows > 0
    a = {r["prompt_id"]: r for r in DeltaTable(plain.table).to_pyarrow_table().to_pylist()}
    b = {r["prompt_id"]: r for r in DeltaTable(fast.table).to_pyarrow_table().to_pylist()}
    assert a.keys() == b.keys()
    agree = total = 0
    for pid, row in a.items():
        other = b[pid]
        assert other["token_ids"] == row["token_ids"]
        assert other["teacher_ll"] == pytest.approx(row["teacher_ll"], abs=2e-2)
        assert other["reference_ll"] == pytest.approx(row["reference_ll"], abs=2e-2)
        agree += sum(x == y for x, y in zip(row["reference_top"], other["reference_top"],
                                             strict=True))  # fmt: skip
        total += row["tokens"]
    assert agree / total > 0.98  # float rounding may flip a near-tie, rarely
    assert fast.divergence_share == pytest.approx(plain.divergence_share, abs=0.02)
