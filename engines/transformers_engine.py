"""The CPU engine: batched `generate` from transformers, on a full model or a LoRA adapter.

An adapter is merged into its base once at load time (peft's merge_and_unload), so every
generation step costs what the plain model costs. Batches are left-padded, which is what
decoder-only generation needs. Sampling is seeded per request, in one batched `generate`
call: each row draws its token at every step from its own generator, seeded by the request's
seed (`RowSampler`), so a completion depends on its prompt and seed, not on which prompts
share its batch (the batch size, a resumed run's leftovers). Seeding torch once per batch, as
this engine did before, made the same prompt and seed sample other numbers in another batch.
Call `generate` from the thread that built the engine: on CPU, torch generated a third slower
from another thread (the pipeline's stage keeps both on one thread).
"""

from __future__ import annotations

import logging
from pathlib import Path

from germline.engines.engine import ENGINES, Chat, Generation
from germline.engines.errors import EngineError
from germline.engines.loading import load_causal_lm
from germline.engines.sampling import RowSampler, SamplingParams

log = logging.getLogger(__name__)


@ENGINES.register("transformers")
class TransformersEngine:
    """transformers `generate` on CPU (or a GPU, if torch sees one and `device` says so)."""

    name = "transformers"
    # A worker may drop this engine and load another model: torch frees a CPU model's memory
    # when the last reference goes, so one generation pipeline can run several teachers.
    swaps_models = True

    @staticmethod
    def check_available() -> None:
        """Always there: transformers and torch are germline's own dependencies."""

    def __init__(
        self,
        model_dir: Path,
        device: str = "cpu",
        threads: int | None = None,
        dtype: str = "float32",
    ) -> None:
        import torch

        if threads:
            torch.set_num_threads(threads)
        self.device = torch.device(device)
        model, self.tokenizer = load_causal_lm(model_dir, dtype)
        self.model = model.to(self.device).eval()
        self.tokenizer.padding_side = "left"
        if self.tokenizer.pad_token_id is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        if self.tokenizer.chat_template is None:
            raise EngineError(f"the tokenizer at {model_dir} has no chat template")

    def render(self, chat: Chat) -> str:
        """The prompt text the model sees for one chat."""
        return self.tokenizer.apply_chat_template(chat, add_generation_prompt=True, tokenize=False)

    def generate(
        self, prompts: list[Chat], params: SamplingParams, seeds: list[int]
    ) -> list[Generation]:
        import torch

        if not prompts:
            return []
        texts = [self.render(chat) for chat in prompts]
        batch = self.tokenizer(
            texts, return_tensors="pt", padding=True, add_special_tokens=False
        ).to(self.device)
        # Greedy decoding is plain `generate`; sampling is greedy over what `RowSampler` left
        # of each row's scores: the one token the row drew from its own generator.
        processors = []
        if params.temperature > 0:
            processors.append(RowSampler(seeds, params.temperature, params.top_p))
        with torch.inference_mode():
            out = self.model.generate(
                **batch,
                max_new_tokens=params.max_tokens,
                do_sample=False,
                logits_processor=processors,
                pad_token_id=self.tokenizer.pad_token_id,
                eos_token_id=self.tokenizer.eos_token_id,
            )
        width = batch["input_ids"].shape[1]
        prompt_lengths = batch["attention_mask"].sum(dim=1).tolist()
        eos = self.tokenizer.eos_token_id
        pad = self.tokenizer.pad_token_id
        results = []
        for row, prompt_tokens in zip(out[:, width:].tolist(), prompt_lengths, strict=True):
            # generate pads finished rows; the completion ends at the first EOS.
            stop = eos in row
            tokens = row[: row.index(eos)] if stop else [t for t in row if t != pad]
            results.append(
                Generation(
                    text=self.tokenizer.decode(tokens, skip_special_tokens=True),
                    prompt_tokens=int(prompt_tokens),
                    completion_tokens=len(tokens) + (1 if stop else 0),
                    finish_reason="stop" if stop else "length",
                )
            )
        return results
