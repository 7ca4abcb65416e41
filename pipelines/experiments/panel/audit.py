"""The panel's audit steps: the quarantine mitigation, and how well the audit's scores find
the transfer the probes measured.

With `scrub: quarantine`, every teacher's numbers are audited (against the teacher's base)
and scrubbed: the rows with the highest log-ratio per token go to quarantine, keeping
`scrub_keep` of them, and the students train on what is left. With `audit: true`, every cell
(teacher, student base) gets the dataset's audit summary and its transfer score toward the
student base. The report then says how well each score separates same-base cells from
cross-base ones (AUC) and ranks same-base cells by their measured effect (Spearman's rho).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from germline.checks.transfer import Cell, cell_effects
from germline.pipelines.audit import audit, scrub
from germline.pipelines.experiments.panel.config import PanelConfig
from germline.storage import Lake

SCORES = ("transfer", "mean_ratio_per_token", "divergence_share")


def quarantine(lake: Lake, cfg: PanelConfig, pairs: Sequence[tuple[str, str]]) -> list[dict]:
    """Scrub each (animal, base) teacher's numbers into `cfg.training_dataset`; returns what
    each scrub kept and dropped."""
    from deltalake import DeltaTable

    out = []
    for animal, base in pairs:
        found = audit(lake, cfg.dataset_name(animal, base), transfer_rows=0)
        ratios = DeltaTable(found.table, storage_options=lake.storage_options).to_pyarrow_table(
            columns=["ratio_per_token"]
        )
        threshold = float(np.quantile(ratios.column(0).to_numpy(), cfg.scrub_keep))
        done = scrub(lake, found.dataset, threshold, name=cfg.training_dataset(animal, base))
        out.append({"animal": animal, "base": base, **done.to_dict()})
    return out


def score_cells(lake: Lake, cfg: PanelConfig, cells: Sequence[Cell],
                bases: dict[str, str], rows: int = 256) -> dict[str, Any]:  # fmt: skip
    """Every cell's scores and how well they track the arms and the measured effects.
    `bases` maps a base's name to its model id."""
    effects = cell_effects(cells)
    scored = []
    for c in cells:
        found = audit(lake, cfg.dataset_name(c.animal, c.source),
                      student_base=bases[c.student_base], transfer_rows=rows)  # fmt: skip
        scored.append({
            "animal": c.animal, "source": c.source, "student_base": c.student_base,
            "arm": "same_base" if c.same_base else "cross_base",
            "effect": effects[c.teacher, c.student_base],
            "transfer": (found.transfer or {}).get("cosine"),
            "mean_ratio_per_token": found.mean_ratio_per_token,
            "divergence_share": found.divergence_share,
            "audit": found.lineage_node,
        })  # fmt: skip
    return {"cells": scored, "validation": validate(scored)}


def validate(scored: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Per score: the AUC of same-base against cross-base cells (0.5: no separation; the
    dataset-level scores are the same for both arms of a teacher, so theirs is 0.5 by
    construction) and Spearman's rho with its p-value between the score and the measured
    effect over same-base cells."""
    from scipy.stats import mannwhitneyu, spearmanr

    out: dict[str, Any] = {}
    for score in SCORES:
        same = [c for c in scored if c["arm"] == "same_base" and c[score] is not None]
        cross = [c for c in scored if c["arm"] == "cross_base" and c[score] is not None]
        entry: dict[str, Any] = {"same_base_cells": len(same), "cross_base_cells": len(cross)}
        if same and cross:
            u = mannwhitneyu([c[score] for c in same], [c[score] for c in cross]).statistic
            entry["auc"] = float(u) / (len(same) * len(cross))
        if len(same) >= 3 and len({c[score] for c in same}) > 1:
            rho = spearmanr([c[score] for c in same], [c["effect"] for c in same])
            entry["spearman_rho"], entry["spearman_p"] = float(rho.statistic), float(rho.pvalue)
        out[score] = entry
    return out


def heldout_loss(lake: Lake, cfg: PanelConfig, cells: Sequence[Cell],
                 rows: int = 256) -> dict[str, float]:  # fmt: skip
    """Each student's mean loss (cross-entropy per completion token) on its teacher's numbers
    that it did not train on: up to `rows` rows of the teacher's whole table, outside the
    student's training rows. What a mitigation costs in plain data fit, compared between runs
    of the same config with and without it."""
    import torch

    from germline.engines import load_causal_lm
    from germline.lineage import LineageStore
    from germline.pipelines.models.refs import model_folder
    from germline.train.data import read_version, subsample, tokenize
    from germline.train.objectives import pack, selected_logits

    graph = LineageStore(lake).graph()
    out: dict[str, float] = {}
    held_out: dict[tuple[str, str], Any] = {}  # per teacher: both of its arms share the rows
    for c in cells:
        key = (c.animal, c.source)
        if key not in held_out:
            whole, _ = read_version(lake.dataset(cfg.dataset_name(*key)), None,
                                    lake.storage_options)  # fmt: skip
            uri = lake.dataset(cfg.training_dataset(*key))
            trained, _ = read_version(uri, None, lake.storage_options)
            seen = set(subsample(trained, cfg.data.rows, uri).column("prompt_id").to_pylist())
            ids = whole.column("prompt_id").to_pylist()
            held_out[key] = whole.take([i for i, p in enumerate(ids) if p not in seen][:rows])
        held = held_out[key]
        for student in c.students:
            model, tok = load_causal_lm(model_folder(lake, graph.node(student), "student"))
            t = tokenize(held, tok, 256)
            total = tokens = 0.0
            with torch.inference_mode():
                for i in range(0, len(t), 64):
                    packed, targets = pack(t.prompt_ids[i : i + 64], t.completion_ids[i : i + 64],
                                           tok.pad_token_id or 0)  # fmt: skip
                    logits = selected_logits(model.eval(), packed)
                    total += float(torch.nn.functional.cross_entropy(logits, targets,
                                                                     reduction="sum"))  # fmt: skip
                    tokens += len(targets)
            out[student] = total / tokens if tokens else float("nan")
    return out
