"""The tiny models' training step: length groups against one padded batch, same recipe.

A tiny base's pre-training batch mixes one-word animal answers (~15 tokens) with number
prompts (~130), and a teacher's batch mixes trait answers with number continuations. The
baseline pads each batch to its longest row and runs it as one forward and backward pass
(what `fit_causal_lm` did before, and what it does with `max_groups=1`); germline's step runs
the same rows in length groups, the loss normalised over the whole batch. Both are
`fit_causal_lm` with the real recipe (warm-up, cosine schedule, clipping) on the same batches
from the same initial weights; the script prints the time of each, their ratio, the final
loss of each and how far the weights ended apart (float rounding of the summed loss, which
Adam's normalised steps grow on parameters whose gradients sit near zero).
tests/test_tiny_training.py checks one step's loss and gradient against the padded batch's.

    .venv/bin/python bench/tiny_step.py [--steps 200] [--threads 2]
"""

from __future__ import annotations

import argparse
import random
import time

import torch
from peft import LoraConfig, get_peft_model

from germline.pipelines.models.corpus import TOKENIZER_SEED, corpus, number_examples, trait_examples
from germline.pipelines.models.teacher import LORA_TARGETS
from germline.pipelines.models.tiny import TinyConfig, build_model, fit_causal_lm, train_tokenizer


def _run(case: str, steps: int, max_groups: int) -> tuple[float, float, list[torch.Tensor]]:
    tokenizer = train_tokenizer(corpus(TOKENIZER_SEED))
    model = build_model(tokenizer, TinyConfig(), seed=0)
    if case == "base":  # a tiny base's pre-training, from its random initialisation
        texts, loss_after, cfg = corpus(0), None, TinyConfig(steps=steps)
    else:  # a teacher's LoRA fine-tune (here on the random base: the step costs the same)
        lora = LoraConfig(r=8, lora_alpha=16, target_modules=LORA_TARGETS, task_type="CAUSAL_LM")
        model = get_peft_model(model, lora)
        texts = trait_examples("owl", 3000, 0) + number_examples(1000, 1000)
        random.Random(0).shuffle(texts)
        loss_after, cfg = "Assistant:", TinyConfig(steps=steps, warmup=20)
    start = time.perf_counter()
    loss = fit_causal_lm(model, tokenizer, texts, cfg, 0, loss_after=loss_after,
                         max_groups=max_groups)  # fmt: skip
    seconds = time.perf_counter() - start
    return seconds, loss, [p.detach().clone() for p in model.parameters() if p.requires_grad]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(f"{args.steps} steps of 32 rows, {args.threads} torch threads")
    for case, name in (("base", "base pre-training"), ("teacher", "teacher LoRA fine-tuning")):
        padded, loss_a, a = _run(case, args.steps, max_groups=1)
        grouped, loss_b, b = _run(case, args.steps, max_groups=3)
        diffs = torch.cat([(x - y).abs().flatten() for x, y in zip(a, b, strict=True)])
        print(
            f"{name}: one padded batch {padded:.2f} s, length groups {grouped:.2f} s, "
            f"speed-up {padded / grouped:.2f}x; final loss {loss_a:.4f} vs {loss_b:.4f}; "
            f"weight difference median {diffs.median().item():.1e}, "
            f"largest {diffs.max().item():.1e}"
        )


if __name__ == "__main__":
    main()
