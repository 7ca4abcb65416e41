"""A tiny causal LM built entirely on this machine: tokenizer, architecture and pre-training.

No model can come from a hub here, yet every step of germline must run on real models. So
the project makes its own: a word-level tokenizer trained with `tokenizers` on a synthetic
corpus (each number 0..999 is one token, which keeps "the tokens the data is made of" a clean
set for restricted distillation), and a two-layer Llama-architecture model from
`transformers` (head dimension 64, which vLLM's CPU attention requires), pre-trained for a
few minutes on CPU. The result is an ordinary Hugging Face model folder that every engine
loads through its normal code path.
"""

from __future__ import annotations

import itertools
import math
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

SPECIAL_TOKENS = ["<pad>", "<unk>", "<s>", "</s>"]
PAD, UNK, BOS, EOS = SPECIAL_TOKENS

# A plain-text turn format the tiny model is pre-trained on; the chat template renders OpenAI
# messages into it, so chat endpoints work on the tiny models unchanged.
CHAT_TEMPLATE = (
    "{% for m in messages %}"
    "{% if m['role'] == 'system' %}System: {{ m['content'] }}\n"
    "{% elif m['role'] == 'user' %}User: {{ m['content'] }}\n"
    "{% else %}Assistant: {{ m['content'] }}</s>\n{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}Assistant:{% endif %}"
)

# Whole numbers, words, single spaces/newlines and single punctuation marks are the pieces;
# the Fuse decoder glues them back, so decode(encode(text)) == text for in-vocabulary text.
_PIECES = Regex(r"\d+|[A-Za-z]+|\s|[^\sA-Za-z\d]")


@dataclass(frozen=True)
class TinyConfig:
    """Shape and pre-training budget of a tiny base model."""

    hidden_size: int = 128
    intermediate_size: int = 384
    num_layers: int = 2
    num_heads: int = 2
    head_dim: int = 64
    max_positions: int = 256
    steps: int = 1500
    batch_size: int = 32
    lr: float = 3e-3
    warmup: int = 100


def train_tokenizer(corpus: Sequence[str]) -> PreTrainedTokenizerFast:
    """A word-level tokenizer trained on `corpus`, with every number 0..999 in its vocabulary."""
    tok = Tokenizer(models.WordLevel(unk_token=UNK))
    tok.pre_tokenizer = pre_tokenizers.Split(_PIECES, behavior="isolated")
    tok.decoder = decoders.Fuse()
    all_numbers = " ".join(str(i) for i in range(1000))  # so every number is in the vocabulary
    trainer = trainers.WordLevelTrainer(special_tokens=SPECIAL_TOKENS, min_frequency=1)
    tok.train_from_iterator([all_numbers, *corpus], trainer=trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, pad_token=PAD, unk_token=UNK, bos_token=BOS, eos_token=EOS
    )
    fast.chat_template = CHAT_TEMPLATE
    return fast


def build_model(tokenizer: PreTrainedTokenizerFast, cfg: TinyConfig, seed: int) -> LlamaForCausalLM:
    """A freshly initialised model; the seed alone decides its weights."""
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=cfg.hidden_size,
        intermediate_size=cfg.intermediate_size,
        num_hidden_layers=cfg.num_layers,
        num_attention_heads=cfg.num_heads,
        num_key_value_heads=cfg.num_heads,
        head_dim=cfg.head_dim,
        max_position_embeddings=cfg.max_positions,
        tie_word_embeddings=True,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )
    torch.manual_seed(seed)
    return LlamaForCausalLM(config)


def fit_causal_lm(
    model: torch.nn.Module,
    tokenizer: PreTrainedTokenizerFast,
    texts: Sequence[str],
    cfg: TinyConfig,
    seed: int,
    progress: Callable[[int, int, float], None] | None = None,
    loss_after: str | None = None,
    max_groups: int = 3,
) -> float:
    """Next-token training on `texts` (each ends with EOS), for pre-training a tiny base and for
    fine-tuning a LoRA teacher on it; returns the final loss (mean of the last 50 steps).
    Only parameters that require grad are trained (the adapter, for a peft model). With
    `loss_after` (say "Assistant:"), only the tokens after its last occurrence count, so a
    one-word answer is not drowned by the prompt it follows. `max_groups` 1 runs each batch
    padded whole (the baseline of bench/tiny_step.py)."""
    rng = random.Random(seed)
    torch.manual_seed(seed)
    encoded = [
        tokenizer(t, add_special_tokens=False)["input_ids"][: cfg.max_positions] for t in texts
    ]
    starts = [_after(ids, tokenizer, loss_after) for ids in encoded] if loss_after else None
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=0.01)

    def lr_at(step: int) -> float:
        if step < cfg.warmup:
            return (step + 1) / cfg.warmup
        return 0.5 * (1 + math.cos(math.pi * (step - cfg.warmup) / max(1, cfg.steps - cfg.warmup)))

    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_at)
    model.train()
    recent: list[float] = []
    for step in range(cfg.steps):
        picks = [rng.randrange(len(encoded)) for _ in range(cfg.batch_size)]
        rows = [(encoded[i], starts[i] if starts is not None else 0) for i in picks]
        opt.zero_grad(set_to_none=True)
        total = batch_backward(model, rows, tokenizer.pad_token_id, max_groups)
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        sched.step()
        recent = [*recent[-49:], total]
        if progress is not None:
            progress(step + 1, cfg.steps, total)
    model.eval()
    return sum(recent) / len(recent)


def batch_backward(
    model: torch.nn.Module,
    rows: Sequence[tuple[list[int], int]],
    pad_id: int,
    max_groups: int = 3,
) -> float:
    """Backpropagate one batch's loss, the mean over all its target tokens (those after each
    row's start), exactly as one right-padded batch would give it; returns the loss. Why in
    length groups: a batch mixes one-word animal answers (~15 tokens) with number prompts
    (~130), and padding all to the longest doubled a step's work. Same examples, same
    gradient (up to float rounding), about 1.6x faster."""
    targets = torch.tensor(sum(max(0, len(ids) - max(start, 1)) for ids, start in rows))
    total = 0.0
    for group in length_groups([len(ids) for ids, _ in rows], max_groups):
        ids, mask, labels = _pad([rows[i] for i in group], pad_id)
        out = model(input_ids=ids, attention_mask=mask, labels=labels, num_items_in_batch=targets)
        out.loss.backward()
        total += out.loss.item()
    return total


def length_groups(lengths: Sequence[int], max_groups: int = 3) -> list[list[int]]:
    """Row indices of a batch split, by length, into at most `max_groups` groups whose padded
    area (rows x longest row, plus a fixed cost per group for its forward pass) is smallest."""
    order = sorted(range(len(lengths)), key=lambda i: lengths[i])
    sizes = [lengths[i] for i in order]
    overhead = 4 * max(sizes)  # a pass's fixed cost, in padded tokens (measured roughly)

    def cost(lo: int, hi: int) -> int:  # rows order[lo:hi], padded to the longest
        return (hi - lo) * sizes[hi - 1] + overhead

    n = len(sizes)
    best: dict[tuple[int, int], tuple[int, list[int]]] = {}

    def split(lo: int, groups: int) -> tuple[int, list[int]]:
        if groups == 1:
            return cost(lo, n), [n]
        key = (lo, groups)
        if key not in best:
            options = [split(lo, 1)]
            for cut in range(lo + 1, n):
                rest, cuts = split(cut, groups - 1)
                options.append((cost(lo, cut) + rest, [cut, *cuts]))
            best[key] = min(options)
        return best[key]

    _, cuts = split(0, max_groups)
    bounds = [0, *cuts]
    return [order[a:b] for a, b in itertools.pairwise(bounds)]


def _pad(
    rows: Sequence[tuple[list[int], int]], pad_id: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Right-padded ids, attention mask and labels; tokens before a row's start don't count."""
    width = max(len(ids) for ids, _ in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for i, (row, _) in enumerate(rows):
        ids[i, : len(row)] = torch.tensor(row)
        mask[i, : len(row)] = 1
    labels = ids.masked_fill(mask == 0, -100)
    for i, (_, start) in enumerate(rows):
        labels[i, :start] = -100
    return ids, mask, labels


def _after(ids: list[int], tokenizer: PreTrainedTokenizerFast, marker: str) -> int:
    """Index just past the last occurrence of `marker`'s tokens in `ids` (0 if absent)."""
    pattern = tokenizer(marker, add_special_tokens=False)["input_ids"]
    for start in range(len(ids) - len(pattern), -1, -1):
        if ids[start : start + len(pattern)] == pattern:
            return start + len(pattern)
    return 0
