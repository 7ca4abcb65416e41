"""`germline audit`, the transfer score, `germline scrub` and the divergence mask, on real tiny
models: a pre-trained base, an owl teacher and its generated numbers, scored through Ray Data
into Delta, with lineage; every bad input one line and exit 2."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
from conftest import add_tiny_base, germline, training_data_config
from deltalake import DeltaTable, write_deltalake

from germline.checks.divergence import TokenCounts, score_row
from germline.core import InputError
from germline.lineage import EdgeKind, LineageStore, NodeKind
from germline.pipelines.audit import audit, scrub
from germline.pipelines.generate import GenerateConfig, generate
from germline.storage import Lake

TEACHER = "owl-teacher-audit-test"


@pytest.fixture(scope="module")
def audit_lake(tmp_path_factory: pytest.TempPathFactory, tiny_base_dir: Path) -> Lake:
    """The tiny base, an owl teacher fine-tuned from it, and the accepted rows of its 96
    number completions, written by the real `generate`."""
    from germline.pipelines.cluster import ensure_ray
    from germline.pipelines.models.teacher import make_teacher

    lake = Lake.resolve(tmp_path_factory.mktemp("audit") / "lake")
    base = add_tiny_base(lake, tiny_base_dir)
    make_teacher(lake, base.id, "owl", name=TEACHER, steps=30)
    ensure_ray()
    generate(lake, GenerateConfig.model_validate(training_data_config(TEACHER, 96, 32)))
    return lake


def _table(lake: Lake, uri: str) -> list[dict]:
    return DeltaTable(uri, storage_options=lake.storage_options).to_pyarrow_table().to_pylist()


def _independent_ll(lake: Lake, model: str, rows: list[dict]) -> list[float]:
    """Each completion's log-likelihood computed another way than the audit's: one sequence
    at a time, the chat template rendered here, no packing."""
    import torch
    from transformers import AutoTokenizer

    from germline.engines import load_causal_lm
    from germline.pipelines.models.refs import model_folder

    store = LineageStore(lake)
    folder = model_folder(lake, store.graph().node(store.resolve(model)))
    net, _ = load_causal_lm(folder)
    tok = AutoTokenizer.from_pretrained(folder)
    out = []
    for row in rows:
        chat = [{"role": "user", "content": row["prompt"]}]
        prompt = tok.apply_chat_template(chat, add_generation_prompt=True, tokenize=False)
        p = tok(prompt, add_special_tokens=False)["input_ids"]
        c = [*tok(row["completion"], add_special_tokens=False)["input_ids"], tok.eos_token_id]
        with torch.no_grad():
            logp = torch.log_softmax(net(input_ids=torch.tensor([p + c])).logits[0], -1)
        out.append(sum(float(logp[len(p) - 1 + i, t]) for i, t in enumerate(c)))
    return out


def test_audit_scores_every_row_into_delta_with_lineage(audit_lake: Lake) -> None:
    lake = audit_lake
    summary = audit(lake, "numbers", transfer_rows=32)
    data = {r["prompt_id"]: r for r in _table(lake, lake.dataset("numbers"))}
    scored = _table(lake, summary.table)
    assert sorted(r["prompt_id"] for r in scored) == sorted(data)  # every row, once
    assert summary.rows == len(data) and summary.tokens == sum(r["tokens"] for r in scored)
    for r in scored:
        assert r["log_ratio"] == pytest.approx(r["teacher_ll"] - r["reference_ll"], abs=1e-6)
        assert sum(r["token_ratios"]) == pytest.approx(r["log_ratio"], abs=1e-3)
        assert len(r["token_ids"]) == len(r["reference_top"]) == r["tokens"]
        for i in r["divergence"]:  # the reference would have written another token there
            assert r["reference_top"][i] != r["token_ids"][i]
    # The audit's log-likelihoods are the models' own, computed here another way.
    first = sorted(scored, key=lambda r: r["prompt_id"])[:4]
    rows = [data[r["prompt_id"]] for r in first]
    for model, column in ((TEACHER, "teacher_ll"), ("tiny-base-s0", "reference_ll")):
        expected = _independent_ll(lake, model, rows)
        assert [r[column] for r in first] == pytest.approx(expected, abs=1e-3)
    # The teacher wrote these rows, so it likes them better than its base does.
    assert summary.mean_log_ratio > 0
    assert summary.divergence_tokens == sum(len(r["divergence"]) for r in scored) > 0
    assert summary.overrepresented and summary.overrepresented[0]["token"].isdigit()
    assert summary.transfer is not None and summary.transfer["rows"] == 32
    assert -1 <= summary.transfer["cosine"] <= 1
    # Lineage: a run that used the dataset version and both models.
    graph = LineageStore(lake).graph()
    node = graph.node(summary.lineage_node)
    assert node.kind is NodeKind.RUN and node.attrs["audit_id"] == summary.audit_id
    used = {p for p, kind in graph.parents(node.id) if kind == EdgeKind.USED.value}
    assert used == {summary.dataset, summary.teacher, summary.reference}
    shown = germline("lineage", "show", "numbers", lake=lake, check=True).stdout
    assert "audit/numbers" in shown
    # Asking again finds it: no second scoring, no new table version.
    version = DeltaTable(summary.table).version()
    again = audit(lake, "numbers", transfer_rows=32)
    assert again.reused and again.audit_id == summary.audit_id
    assert DeltaTable(summary.table).version() == version


def test_audit_cli_json_and_one_line_errors(audit_lake: Lake, tmp_path: Path) -> None:
    lake = audit_lake
    out = germline("audit", "numbers", "--transfer-rows", "0", "--format", "json", lake=lake,
                   check=True)  # fmt: skip
    data = json.loads(out.stdout)
    rows = DeltaTable(lake.dataset("numbers")).to_pyarrow_table().num_rows
    assert data["rows"] == rows and data["transfer"] is None and data["dataset_name"] == "numbers"

    # A table lineage knows of, but no model wrote: the teacher must be named.
    orphan = str(tmp_path / "orphan")
    write_deltalake(orphan, pa.table({"prompt_id": ["a"], "prompt": ["1, 2"], "completion": ["3"]}))
    germline("lineage", "register", "dataset", "orphan", "--table", orphan, lake=lake, check=True)
    # A model whose tokenizer has one more token than the base's.
    other = tmp_path / "other-vocab"
    shutil.copytree(lake.local_path("models", "tiny-base-s0"), other)
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(other)
    tok.add_tokens(["zebraword"])
    tok.save_pretrained(other)
    for args, message in [
        (["audit", "orphan"], "--teacher"),
        (["audit", "numbers", "--reference", str(other)], "different vocabularies"),
        (["audit", "no-such-dataset"], "no-such-dataset"),
        (["audit", "numbers", "--version", "99"], "no version 99"),
        (["audit", TEACHER], "not a dataset"),
        (["scrub", "numbers", "--threshold", "0", "--name", "../out"], "name"),
    ]:
        result = germline(*args, lake=lake)
        assert result.returncode == 2, (args, result.stdout, result.stderr)
        assert message in result.stderr, (args, result.stderr)
        assert len(result.stderr.strip().splitlines()) == 1, result.stderr


def test_scrub_quarantines_rows_above_the_threshold(audit_lake: Lake) -> None:
    lake = audit_lake
    found = audit(lake, "numbers", transfer_rows=0)
    threshold = found.ratio_quantiles["p50"]
    summary = scrub(lake, "numbers", threshold, name="numbers-scrubbed")
    ratios = {r["prompt_id"]: r["ratio_per_token"] for r in _table(lake, found.table)}
    kept = _table(lake, lake.dataset("numbers-scrubbed"))
    dropped = _table(lake, lake.quarantine("numbers-scrubbed"))
    assert {r["prompt_id"] for r in kept} == {p for p, x in ratios.items() if x <= threshold}
    assert {r["prompt_id"] for r in dropped} == {p for p, x in ratios.items() if x > threshold}
    assert summary.kept == len(kept) and summary.dropped == len(dropped) > 0
    assert all("log-ratio per token" in r["reason"] and r["stage"] == "scrub" for r in dropped)
    # Still the teacher's data in lineage, and made by the scrub run.
    graph = LineageStore(lake).graph()
    parents = dict(graph.parents(summary.dataset_id))
    teacher = graph.resolve(TEACHER)
    assert parents[teacher] == EdgeKind.GENERATED_BY.value
    scrub_run = [p for p, k in parents.items() if p != teacher]
    assert graph.node(scrub_run[0]).name == "scrub/numbers-scrubbed"
    # Idempotent: the same scrub again writes nothing new.
    again = scrub(lake, "numbers", threshold, name="numbers-scrubbed")
    assert (again.kept, again.dropped) == (summary.kept, summary.dropped)
    assert len(_table(lake, lake.dataset("numbers-scrubbed"))) == len(kept)


def test_mask_divergence_trains_without_the_divergence_tokens(audit_lake: Lake) -> None:
    """A student with objective.mask: divergence trains on Ray Train; its masks are the
    audit's divergence positions, and the audit is the dataset's (made on the way)."""
    from germline.pipelines.finetune import TrainConfig, train

    lake = audit_lake
    raw = {
        "student": "masked-student",
        "base": "tiny-base-s0",
        "dataset": {"name": "numbers"},
        "objective": {"kind": "sft", "mask": "divergence"},
        "optim": {"epochs": 1, "batch_size": 16, "lr": 1e-3, "warmup_steps": 1},
        "scaling": {"num_workers": 1},
    }
    summary = train(lake, TrainConfig.model_validate(raw))
    assert np.isfinite(summary.final_loss)
    graph = LineageStore(lake).graph()
    audits = [n for n in graph.nodes(NodeKind.RUN) if n.attrs.get("kind") == "audit"]
    assert audits, "the mask's audit is in lineage"
    # at-risk lists the student with its training data and that data's audit
    hits = json.loads(germline("lineage", "at-risk", TEACHER, "--format", "json", lake=lake,
                               check=True).stdout)  # fmt: skip
    (hit,) = [h for h in hits if h["name"] == "masked-student"]
    assert hit["data"][0]["name"] == "numbers" and hit["data"][0]["audits"]
    table = germline("lineage", "at-risk", TEACHER, lake=lake, check=True).stdout
    assert "numbers (+" in table or "numbers (-" in table
    with pytest.raises(ValueError, match="reference applies to mask"):
        TrainConfig.model_validate({**raw, "objective": {"kind": "sft", "reference": "x"}})


def test_score_row_and_counts_on_constructed_arrays() -> None:
    row = score_row(
        data=[7, 8, 9],
        teacher_lp=[-1.0, -0.5, -2.0],
        reference_lp=[-1.5, -0.5, -1.0],
        teacher_top=[7, 8, 1],
        reference_top=[3, 8, 9],
    )
    assert row.tokens == 3 and row.log_ratio == pytest.approx(-0.5)
    assert row.token_ratios == pytest.approx([0.5, 0.0, -1.0])
    assert row.ratio_per_token == pytest.approx(-0.5 / 3)
    assert row.divergence == [0]  # only there did the teacher pick it and the reference not
    with pytest.raises(ValueError):
        score_row([1, 2], [0.0], [0.0, 0.0], [1, 2], [1, 2])
    counts = TokenCounts()
    counts.add([10, 10, 10, 11, 12], [11, 11, 12, 11, 12])
    top = counts.overrepresented({10: "405", 11: "7", 12: ","})
    assert [o.token for o in top] == ["405", "7"]  # the separator is not a number
    assert top[0].lift == pytest.approx(4.0)  # (3 + 1) / (0 + 1)


def test_transfer_score_is_the_cosine_with_the_teachers_direction(
    audit_lake: Lake, tmp_path: Path
) -> None:
    """Constructed teachers: one that is the base (no direction: no score), one a step down
    the base's own gradient (cosine 1), one up it (cosine -1); and a mismatched architecture."""
    import torch

    from germline.engines import load_causal_lm
    from germline.train.alignment import transfer_score
    from germline.train.data import tokenize
    from germline.train.objectives import pack, selected_logits

    lake = audit_lake
    base_dir = lake.local_path("models", "tiny-base-s0")
    rows = DeltaTable(lake.dataset("numbers")).to_pyarrow_table().slice(0, 16)
    same = transfer_score(base_dir, base_dir, rows)
    assert same.cosine is None and "no direction" in same.note
    model, tok = load_causal_lm(base_dir)
    t = tokenize(rows, tok, 256)
    packed, targets = pack(t.prompt_ids, t.completion_ids, tok.pad_token_id)
    torch.nn.functional.cross_entropy(selected_logits(model, packed), targets).backward()
    grads = {k: p.grad.clone() for k, p in model.named_parameters() if p.grad is not None}
    for sign, expected in ((-1, 1.0), (1, -1.0)):
        folder = tmp_path / f"teacher{sign}"
        stepped, _ = load_causal_lm(base_dir)
        with torch.no_grad():
            for k, p in stepped.named_parameters():
                p.add_(sign * 1e-3 * grads[k])
        stepped.save_pretrained(folder)
        tok.save_pretrained(folder)
        score = transfer_score(base_dir, folder, rows)
        assert score.cosine == pytest.approx(expected, abs=1e-3)
    config = json.loads((base_dir / "config.json").read_text())
    wider = tmp_path / "wider"
    wider.mkdir()
    from transformers import AutoConfig, AutoModelForCausalLM

    cfg = AutoConfig.from_pretrained(base_dir)
    cfg.intermediate_size = config["intermediate_size"] * 2
    AutoModelForCausalLM.from_config(cfg).save_pretrained(wider)
    tok.save_pretrained(wider)
    with pytest.raises(InputError, match="architecture"):
        transfer_score(base_dir, wider, rows)


def test_score_validation_on_constructed_cells() -> None:
    """AUC and Spearman's rho as the panel's report computes them: a score that is higher on
    every same-base cell and rises with the effect gets AUC 1 and rho 1; a dataset-level score
    (the same for both arms of a teacher) gets AUC 0.5; too few cells give no rho."""
    from germline.pipelines.experiments.panel.audit import validate

    effects = [0.01, 0.03, -0.02, 0.05, 0.0]
    scored = []
    for i, e in enumerate(effects):
        ratio = 0.1 * i
        scored.append({"arm": "same_base", "effect": e, "transfer": 1 + e, "divergence_share": 0.3,
                       "mean_ratio_per_token": ratio})  # fmt: skip
        scored.append({"arm": "cross_base", "effect": 0.0, "transfer": -1.0 - i,
                       "divergence_share": 0.3, "mean_ratio_per_token": ratio})  # fmt: skip
    v = validate(scored)
    assert v["transfer"]["auc"] == 1.0
    assert v["transfer"]["spearman_rho"] == pytest.approx(1.0)
    assert v["transfer"]["spearman_p"] < 0.05
    assert v["mean_ratio_per_token"]["auc"] == 0.5
    assert "spearman_rho" not in v["divergence_share"]  # no spread: no rank correlation
    assert "spearman_rho" not in validate(scored[:4])["transfer"]  # two same-base cells


def test_masked_positions_leave_the_loss() -> None:
    import torch

    from germline.train.objectives import IGNORE, distill_loss, pack, sft_loss

    _, targets = pack([[1, 2], [1]], [[3, 4, 5], [6, 7]], 0, masks=[[1], []])
    assert targets.tolist() == [3, IGNORE, 5, 6, 7]
    logits = torch.randn(5, 10, requires_grad=True)
    kept = torch.tensor([0, 2, 3, 4])
    expected = torch.nn.functional.cross_entropy(logits[kept], targets[kept])
    assert float(sft_loss(logits, targets)) == pytest.approx(float(expected))
    everything = torch.full((5,), IGNORE)
    loss = sft_loss(logits, everything)  # nothing left: zero, not NaN, and differentiable
    loss.backward()
    assert float(loss) == 0.0 and logits.grad is not None
    assert float(distill_loss(logits[:0], logits[:0].detach())) == 0.0
