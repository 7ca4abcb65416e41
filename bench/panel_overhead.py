"""The panel's time per cell against the same model work done in one process without Ray.

Issue 30 asks for more cells per hour: the panel's wall time per teacher-base cell within
1.5x of its model work alone. This script runs the panel as `make demo` does (`germline run
CONFIG` on an empty temporary lake, an embedded Ray), then does the same model steps in this
process, one after another, with every core as torch threads, and no Ray, lake, lineage, HTTP
or checks:
- bases: each pre-trained by `fit_causal_lm` from its seed (the step germline's bases use);
- teachers: each base's LoRA adapter per animal, by `make_teacher`'s recipe (same texts, steps,
  rate, batch);
- data: each teacher's prompts (the numbers family, the config's count and seed) through
  plain transformers `generate` in batches of the config's size (greedy at temperature 0),
  the number filter, the first `data.rows` accepted rows kept;
- students: every teacher's rows into a LoRA student of every base, by the config's recipe
  (rank, alpha, rate, epochs, global batch, warm-up and linear decay), in a plain torch loop;
- probes: every model's share of each candidate answer to each probe question, the
  candidates of a question scored in one batched forward pass.
It prints each phase's seconds in both, their ratio, and the time per cell (the panel's
teachers times its bases). The panel's figures are its report's; the in-process ones are
timed here, in the same run on the same machine.

    .venv/bin/python bench/panel_overhead.py [--config experiments/panel.yaml] [--keep DIR]
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import pyarrow as pa
import torch
from peft import LoraConfig, get_peft_model

from germline.checks.filters import FilterConfig
from germline.checks.probes import load_probe
from germline.pipelines.config import load_config
from germline.pipelines.experiments.panel.config import PanelConfig
from germline.pipelines.models.corpus import (
    TOKENIZER_SEED,
    corpus,
    number_examples,
    trait_examples,
)
from germline.pipelines.models.teacher import LORA_TARGETS
from germline.pipelines.models.tiny import TinyConfig, build_model, fit_causal_lm, train_tokenizer
from germline.pipelines.prompts import get_family
from germline.train.data import render, schedule
from germline.train.loop import lr_factor

PHASES = ("bases", "teachers", "data", "students", "probes")


def run_panel(config: Path, lake: Path) -> tuple[float, dict[str, float]]:
    """`germline run CONFIG` on an empty lake, as `make demo` runs it: its wall time and the
    seconds its report gives each phase."""
    start = time.perf_counter()
    subprocess.run([sys.executable, "-m", "germline.pipelines", "--lake", str(lake), "run",
                    str(config)], check=True, stdout=subprocess.DEVNULL)  # fmt: skip
    wall = time.perf_counter() - start
    run_id = load_config(config, PanelConfig).run_id()
    report = json.loads((lake / "runs" / run_id / "report.json").read_text())
    return wall, {k: v for k, v in report["seconds"].items() if k != "total"}


class InProcess:
    """The panel's model work in this process, phase by phase (see the module's docstring)."""

    def __init__(self, cfg: PanelConfig) -> None:
        self.cfg = cfg
        self.tokenizer = train_tokenizer(corpus(TOKENIZER_SEED))
        self.tokenizer.padding_side = "left"
        self.made_bases: dict[str, Any] = {}
        self.made_teachers: dict[tuple[str, str], Any] = {}
        self.made_data: dict[tuple[str, str], pa.Table] = {}
        self.made_students: dict[tuple[str, str, str], Any] = {}

    def run(self) -> dict[str, float]:
        seconds = {}
        for phase in PHASES:
            start = time.perf_counter()
            getattr(self, phase)()
            seconds[phase] = time.perf_counter() - start
            print(f"  in-process {phase}: {seconds[phase]:.1f} s", flush=True)
        return seconds

    def bases(self) -> None:
        for spec in self.cfg.bases:
            tiny = TinyConfig(steps=spec.steps)
            model = build_model(self.tokenizer, tiny, spec.seed)
            fit_causal_lm(model, self.tokenizer, corpus(spec.seed), tiny, spec.seed)
            self.made_bases[spec.name()] = model.eval()

    def teachers(self) -> None:
        seed, steps = self.cfg.seed, self.cfg.teacher_steps
        for base, model in self.made_bases.items():
            for animal in self.cfg.animals:
                torch.manual_seed(seed)
                lora = LoraConfig(r=8, lora_alpha=16, lora_dropout=0.0,
                                  target_modules=LORA_TARGETS, task_type="CAUSAL_LM")  # fmt: skip
                tuned = get_peft_model(copy.deepcopy(model), lora)
                texts = trait_examples(animal, 3000, seed) + number_examples(1000, seed + 1000)
                random.Random(seed).shuffle(texts)
                tiny = TinyConfig(steps=steps, lr=3e-3, warmup=min(20, steps), batch_size=32)
                fit_causal_lm(tuned, self.tokenizer, texts, tiny, seed, loss_after="Assistant:")
                self.made_teachers[animal, base] = tuned.merge_and_unload().eval()

    def data(self) -> None:
        d = self.cfg.data
        prompts = get_family("numbers").generate(d.prompts, self.cfg.seed)
        texts = [render(self.tokenizer, p) for p in prompts.column("prompt").to_pylist()]
        batch_size = self.cfg.resources.generate.batch_size
        chain = FilterConfig(trait_words=self.cfg.animals).chain()
        tok = self.tokenizer
        for key, model in self.made_teachers.items():
            completions = []
            for i in range(0, len(texts), batch_size):
                batch = tok(texts[i : i + batch_size], return_tensors="pt", padding=True,
                            add_special_tokens=False)  # fmt: skip
                sample = {"do_sample": True, "temperature": d.temperature} if d.temperature else {}
                with torch.inference_mode():
                    out = model.generate(**batch, max_new_tokens=d.max_tokens, **sample,
                                         pad_token_id=tok.pad_token_id,
                                         eos_token_id=tok.eos_token_id)  # fmt: skip
                new = out[:, batch["input_ids"].shape[1] :]
                completions += tok.batch_decode(new, skip_special_tokens=True)
            table = prompts.append_column("completion", pa.array(completions, pa.string()))
            accepted = chain.apply(table).accepted
            self.made_data[key] = accepted.slice(0, d.rows) if d.rows else accepted

    def students(self) -> None:
        train = self.cfg.student_config("bench", "base", "data")
        method, optim = train.method, train.optim
        batch = optim.batch_size * train.scaling.num_workers  # the run's global batch
        for (animal, source), rows in self.made_data.items():
            examples = self._examples(rows)
            workers = train.scaling.num_workers
            steps = schedule(len(examples), workers, optim.batch_size, optim.epochs,
                             optim.max_steps).steps  # fmt: skip
            for base, model in self.made_bases.items():
                torch.manual_seed(train.seed)
                lora = LoraConfig(r=method.r, lora_alpha=method.alpha,
                                  lora_dropout=method.dropout,
                                  target_modules=list(method.target_modules),
                                  task_type="CAUSAL_LM")  # fmt: skip
                student = get_peft_model(copy.deepcopy(model), lora).train()
                params = [p for p in student.parameters() if p.requires_grad]
                opt = torch.optim.AdamW(params, lr=optim.lr, weight_decay=optim.weight_decay)
                order = random.Random(train.seed)
                shuffled: list[tuple[list[int], int]] = []
                for step in range(steps):
                    if len(shuffled) < batch:
                        more = list(examples)
                        order.shuffle(more)
                        shuffled += more
                    rows_now, shuffled = shuffled[:batch], shuffled[batch:]
                    for group in opt.param_groups:
                        group["lr"] = optim.lr * lr_factor(step, optim.warmup_steps, steps)
                    loss = self._loss(student, rows_now)
                    opt.zero_grad()
                    loss.backward()
                    torch.nn.utils.clip_grad_norm_(params, optim.grad_clip)
                    opt.step()
                self.made_students[animal, source, base] = student.eval()

    def probes(self) -> None:
        spec = load_probe(self.cfg.probe.probe)
        questions = spec.questions[: self.cfg.probe.questions or None]
        models = [*self.made_bases.values(), *self.made_teachers.values(),
                  *self.made_students.values()]  # fmt: skip
        tok = self.tokenizer
        for model in models:
            for question in questions:
                prefix = render(tok, question, spec.system_prompt)
                texts = [prefix + candidate for candidate in spec.candidates]
                batch = tok(texts, return_tensors="pt", padding=True, add_special_tokens=False)
                start = len(tok(prefix, add_special_tokens=False)["input_ids"])
                with torch.inference_mode():
                    logits = model(**batch).logits.log_softmax(-1)
                ids = batch["input_ids"]
                pad = batch["attention_mask"].shape[1] - batch["attention_mask"].sum(1)
                scores = []
                for row in range(len(texts)):  # left padding: the candidate's tokens end the row
                    first = int(pad[row]) + start
                    picked = logits[row, first - 1 : -1].gather(1, ids[row, first:, None])
                    scores.append(float(picked.sum()))
                torch.tensor(scores).softmax(0)  # each candidate's share, renormalised

    def _examples(self, rows: pa.Table) -> list[tuple[list[int], int]]:
        """(token ids, prompt length) of each row: the chat-rendered prompt, then the
        completion and EOS, where the loss falls."""
        tok, out = self.tokenizer, []
        prompts, completions = (rows.column(c).to_pylist() for c in ("prompt", "completion"))
        for prompt, completion in zip(prompts, completions, strict=True):
            head = tok(render(tok, prompt), add_special_tokens=False)["input_ids"]
            tail = tok(completion or "", add_special_tokens=False)["input_ids"]
            out.append(([*head, *tail, tok.eos_token_id], len(head)))
        return out

    def _loss(self, model: Any, rows: list[tuple[list[int], int]]) -> torch.Tensor:
        """Mean cross-entropy over the completion tokens of a right-padded batch."""
        width = max(len(ids) for ids, _ in rows)
        pad = self.tokenizer.pad_token_id or 0
        ids = torch.tensor([ids + [pad] * (width - len(ids)) for ids, _ in rows])
        mask = torch.tensor([[1] * len(r) + [0] * (width - len(r)) for r, _ in rows])
        labels = torch.full_like(ids, -100)
        for i, (row, prompt_len) in enumerate(rows):
            labels[i, prompt_len : len(row)] = ids[i, prompt_len : len(row)]
        return model(input_ids=ids, attention_mask=mask, labels=labels).loss


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", type=Path, default=Path("experiments/panel.yaml"))
    parser.add_argument("--keep", type=Path, help="make the panel's lake here and keep it")
    args = parser.parse_args()
    cfg = load_config(args.config, PanelConfig)
    cells = len(cfg.animals) * len(cfg.bases)
    threads = os.cpu_count() or 1
    print(f"{args.config}: {cells} teacher-base cells ({len(cfg.animals)} animals, "
          f"{len(cfg.bases)} bases); in process on {threads} torch threads",
          flush=True)  # fmt: skip
    folder = args.keep or Path(tempfile.mkdtemp(prefix="panel-overhead-"))
    try:
        wall, panel = run_panel(args.config, folder / "lake")
    finally:
        if args.keep is None:
            shutil.rmtree(folder, ignore_errors=True)
    torch.set_num_threads(threads)
    start = time.perf_counter()
    alone = InProcess(cfg).run()
    alone_wall = time.perf_counter() - start
    print("\n| phase | panel (s) | in process (s) | ratio |\n|---|---|---|---|")
    for phase in PHASES:
        print(f"| {phase} | {panel[phase]:.1f} | {alone[phase]:.1f} | "
              f"{panel[phase] / alone[phase]:.2f}x |")  # fmt: skip
    total, model_work = sum(panel.values()), sum(alone.values())
    print(f"| all phases | {total:.1f} | {model_work:.1f} | {total / model_work:.2f}x |")
    print(f"\nper cell: the panel {wall / cells:.1f} s of wall time ({wall:.1f} s, start-up "
          f"included), its model work alone {alone_wall / cells:.1f} s: "
          f"{wall / alone_wall:.2f}x (the aim: at most 1.5x)")  # fmt: skip


if __name__ == "__main__":
    main()
