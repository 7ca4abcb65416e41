"""Benchmark of `germline train`: Ray Train's cost over a plain single-process torch loop.

Both train the same LoRA student (the tiny base, rank 8 on every projection) on the same
tokenized rows in the same order, with the same global batch, optimizer and schedule:

* plain    -- one process, all the machine's cores in torch's thread pool, a hand-written
              loop (pad, mask the prompt out of the labels, `model(..., labels=...)`, AdamW).
              This is the baseline.
* germline -- `germline train` (the library call under the CLI) on N Ray Train workers. Its
              samples/s is taken at steady state, from its first finished step to its last;
              Ray's start-up (cluster attach, worker group, model loads, until the first step)
              is reported apart, as is the whole run's wall time.

The ratio printed is germline's steady-state samples/s over the plain loop's. It is run for
1 worker (Ray Train's own overhead: same threads, no gradient all-reduce) and for 2 workers
(what the example config uses here: data parallel over the cores).

    python bench/train.py --lake /path/to/lake       # the lake of experiments/generate-owl.yaml
    python bench/train.py --lake L --steps 60 --json out.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

import torch

from germline.pipelines.finetune import TrainConfig, train
from germline.storage import Lake
from germline.train.data import read_version, schedule, step_order, tokenize


def config(args: argparse.Namespace, student: str, workers: int) -> TrainConfig:
    return TrainConfig.model_validate(
        {
            "student": student,
            "base": args.base,
            "dataset": {"name": args.dataset},
            "seed": args.seed,
            "optim": {
                "batch_size": args.global_batch // workers,
                "max_steps": args.steps,
                "lr": 2e-3,
                "warmup_steps": 5,
            },
            "scaling": {"num_workers": workers, "cpus_per_worker": os.cpu_count() // workers},
            "checkpoint": {"every": 10_000},  # the final one only: we time training, not I/O
        }
    )


def plain_loop(lake: Lake, cfg: TrainConfig, base_dir: str) -> dict:
    """What a user would write with torch, transformers and peft alone."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.set_num_threads(os.cpu_count() or 1)
    rows, _ = read_version(lake.dataset(cfg.dataset.name), cfg.dataset.version)
    tokenizer = AutoTokenizer.from_pretrained(base_dir)
    tokens = tokenize(rows, tokenizer, cfg.optim.max_length)
    plan = schedule(len(tokens), 1, cfg.optim.batch_size * cfg.scaling.num_workers,
                    cfg.optim.epochs, cfg.optim.max_steps)  # fmt: skip
    order = step_order(plan, cfg.seed)
    torch.manual_seed(cfg.seed)
    model = AutoModelForCausalLM.from_pretrained(base_dir)
    lora = LoraConfig(r=8, lora_alpha=8, target_modules=cfg.method.target_modules,
                      task_type="CAUSAL_LM")  # fmt: skip
    model = get_peft_model(model, lora).train()
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=cfg.optim.lr)
    warm = cfg.optim.warmup_steps
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt,
        lambda s: (s + 1) / warm if s < warm else max(0.0, (plan.steps - s) / (plan.steps - warm)),
    )
    pad = tokenizer.pad_token_id
    times = []
    for step in range(plan.steps):
        picks = order[step * plan.batch_size : (step + 1) * plan.batch_size]
        seqs = [tokens.prompt_ids[i] + tokens.completion_ids[i] for i in picks]
        width = max(len(s) for s in seqs)
        ids = torch.full((len(seqs), width), pad, dtype=torch.long)
        labels = torch.full_like(ids, -100)
        mask = torch.zeros_like(ids)
        for row, i in enumerate(picks):
            seq, start = seqs[row], len(tokens.prompt_ids[i])
            ids[row, : len(seq)] = torch.tensor(seq)
            mask[row, : len(seq)] = 1
            labels[row, start : len(seq)] = ids[row, start : len(seq)]
        loss = model(input_ids=ids, attention_mask=mask, labels=labels).loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        sched.step()
        times.append(time.perf_counter())
    steady = (plan.steps - 1) * plan.batch_size / (times[-1] - times[0])
    return {"steps": plan.steps, "global_batch": plan.batch_size, "samples_per_s": steady,
            "final_loss": float(loss)}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--lake", required=True, help="a lake with the base and the dataset")
    parser.add_argument("--base", default="tiny-base-s0")
    parser.add_argument("--dataset", default="owl-numbers")
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--global-batch", type=int, default=32)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args()

    lake = Lake.resolve(args.lake)
    tag = f"{int(time.time())}"
    from germline.lineage import LineageStore

    graph = LineageStore(lake).graph()
    base_dir = graph.node(graph.resolve(args.base)).uri
    print(f"{args.steps} steps, global batch {args.global_batch}, base {args.base}", flush=True)
    plain = plain_loop(lake, config(args, f"bench-plain-{tag}", 1), base_dir)
    print(f"plain torch loop: {plain['samples_per_s']:,.1f} samples/s", flush=True)
    results: dict = {"plain": plain, "germline": {}}
    for workers in (1, 2):
        s = train(lake, config(args, f"bench-{workers}w-{tag}", workers))
        ratio = s.samples_per_s / plain["samples_per_s"]
        results["germline"][workers] = {
            "samples_per_s": s.samples_per_s,
            "ratio": ratio,
            "startup_s": s.startup_s,
            "wall_s": s.seconds,
            "whole_run_samples_per_s": s.steps * s.global_batch / s.seconds,
            "final_loss": s.final_loss,
        }
        print(
            f"germline train, {workers} worker(s): {s.samples_per_s:,.1f} samples/s at steady "
            f"state (ratio {ratio:.2f}); Ray start-up to first step {s.startup_s:.1f} s; "
            f"wall {s.seconds:.1f} s ({s.steps * s.global_batch / s.seconds:,.1f} samples/s "
            "over the whole run)",
            flush=True,
        )
    results["machine"] = {"platform": platform.platform(), "python": sys.version.split()[0],
                          "cpus": os.cpu_count(), "torch": torch.__version__}  # fmt: skip
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
