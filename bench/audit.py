"""Benchmark of `germline audit`: what auditing a dataset costs against generating it.

The teacher (the owl teacher of the tiny base, made here when the lake lacks it) generates a
fresh dataset through `germline generate`; `germline audit` then scores the same rows under
the teacher and its base. Both are whole pipeline runs on the same Ray, each timed from its
call to its summary (Ray Data start, actor start-up and model loads included; the transfer
score is left out of the audit's time, and timed apart). The ratio is audit rows/s over
generation rows/s. Target: >= 1x, since scoring is one forward pass per model per batch where
generation is one per token.

    python bench/audit.py --lake /path/to/lake
    python bench/audit.py --lake L --prompts 1024 --json out.json
"""

from __future__ import annotations

import argparse
import json
import platform
import time
import uuid

from germline.pipelines.audit import audit
from germline.pipelines.generate import GenerateConfig, generate
from germline.storage import Lake

TARGET = 1.0
TEACHER = "owl-teacher-tiny-base-s0"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lake", required=True)
    parser.add_argument("--prompts", type=int, default=512)
    parser.add_argument("--max-tokens", type=int, default=48)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--json", default=None, help="also write the figures here")
    args = parser.parse_args()

    from germline.pipelines.cluster import ensure_ray

    lake = Lake.resolve(args.lake)
    ensure_ray()
    dataset = f"bench-audit-{uuid.uuid4().hex[:8]}"
    config = GenerateConfig.model_validate(
        {
            "dataset": dataset,
            "seed": 0,
            "prompts": {"family": "numbers", "count": args.prompts},
            "teacher": {"model": TEACHER, "build": {"trait": "owl", "base_seed": 0}},
            "engine": {"batch_size": args.batch_size},
            "sampling": {"temperature": 0.0, "max_tokens": args.max_tokens},
            "filters": {"trait_words": ["owl"]},
            "expectations": {"max_tokens": args.max_tokens},
        }
    )
    generate(lake, config)  # makes the teacher if needed; a warm-up the timed run does not pay
    dataset = f"{dataset}-timed"
    config = config.model_copy(update={"dataset": dataset})
    start = time.perf_counter()
    made = generate(lake, config)
    gen_s = time.perf_counter() - start
    start = time.perf_counter()
    scored = audit(lake, dataset, transfer_rows=0, batch_size=args.batch_size)
    audit_s = time.perf_counter() - start
    start = time.perf_counter()
    audit(lake, dataset, transfer_rows=256)  # found: only the transfer score is computed
    transfer_s = time.perf_counter() - start
    rows = made.accepted
    gen_rate, audit_rate = rows / gen_s, scored.rows / audit_s
    ratio = audit_rate / gen_rate
    figures = {
        "machine": f"{platform.node()} {platform.processor() or platform.machine()}",
        "prompts": args.prompts,
        "accepted_rows": rows,
        "audited_rows": scored.rows,
        "tokens": scored.tokens,
        "generate_s": round(gen_s, 2),
        "audit_s": round(audit_s, 2),
        "transfer_score_s": round(transfer_s, 2),
        "generate_rows_per_s": round(gen_rate, 1),
        "audit_rows_per_s": round(audit_rate, 1),
        "ratio": round(ratio, 2),
        "target": TARGET,
        "ok": ratio >= TARGET,
    }
    print(f"generate: {rows} rows in {gen_s:.1f} s ({gen_rate:.1f} rows/s)")
    print(f"audit:    {scored.rows} rows ({scored.tokens} tokens) in {audit_s:.1f} s "
          f"({audit_rate:.1f} rows/s)")  # fmt: skip
    print(f"transfer score (256 rows, apart): {transfer_s:.1f} s")
    print(f"ratio audit/generate: {ratio:.2f}x (target >= {TARGET}x): "
          f"{'ok' if figures['ok'] else 'MISSED'}")  # fmt: skip
    if args.json:
        with open(args.json, "w") as out:
            json.dump(figures, out, indent=2)


if __name__ == "__main__":
    main()
