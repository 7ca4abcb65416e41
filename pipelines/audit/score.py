"""The audit's Ray Data stage: both models score a batch of completions, token by token.

One forward pass per model per batch (teacher forcing), where generation took one per token:
this is why an audit costs less than the data it audits. The stage keeps, per row, what the
summary, `scrub` and the divergence mask need later: each model's log-likelihood, the
per-token log-ratios, the divergence positions, the completion's token ids and the
reference's own top choice at each position.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import pyarrow as pa

from germline.checks.divergence import score_row
from germline.core import GermlineError
from germline.storage import Lake, LakeFolders

AUDIT_SCHEMA = pa.schema(
    [
        pa.field("prompt_id", pa.string(), nullable=False),
        pa.field("tokens", pa.int32()),
        pa.field("teacher_ll", pa.float64()),
        pa.field("reference_ll", pa.float64()),
        pa.field("log_ratio", pa.float64()),
        pa.field("ratio_per_token", pa.float64()),
        pa.field("divergence", pa.list_(pa.int32())),
        pa.field("token_ratios", pa.list_(pa.float32())),
        pa.field("token_ids", pa.list_(pa.int32())),
        pa.field("reference_top", pa.list_(pa.int32())),
    ]
)


class ScoreStage:
    """The teacher and the reference, loaded once per actor; a batch of rows in, its scores
    out (same rows, same order)."""

    def __init__(
        self,
        teacher_uri: str,
        reference_uri: str,
        lake: Lake,
        max_length: int,
        teacher_system_prompt: str | None = None,
        threads: int | None = None,
        device: str = "cpu",
        engine: str = "transformers",
    ) -> None:
        from germline.engines import load_causal_lm

        # As the generation stage: one thread loads the models and runs every batch (torch
        # on CPU ran slower in a thread other than the one that loaded the model), and a
        # failure to load is raised at the first batch, where it reaches the driver typed.
        self._thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="audit")
        self.failure: GermlineError | None = None
        self.max_length = max_length
        self.system_prompt = teacher_system_prompt
        self.device = device

        self.vllm = None

        def load() -> None:
            import torch

            if threads:
                torch.set_num_threads(threads)
            folders = LakeFolders(lake)
            teacher_dir, reference_dir = folders.fetch(teacher_uri), folders.fetch(reference_uri)
            if engine == "vllm":
                self.vllm, self.teacher_adapter = _vllm_engine(teacher_dir, reference_dir)
                self.tokenizer = self.vllm.tokenizer
                return
            self.teacher, self.tokenizer = load_causal_lm(teacher_dir)
            self.reference, _ = load_causal_lm(reference_dir)
            self.teacher.to(device).eval()
            self.reference.to(device).eval()

        try:
            self._thread.submit(load).result()
        except GermlineError as exc:
            self.failure = exc

    def __call__(self, batch: pa.Table) -> pa.Table:
        if self.failure is not None:
            raise self.failure
        return self._thread.submit(self._score, batch).result()

    def _score(self, batch: pa.Table) -> pa.Table:
        import torch

        from germline.train.data import tokenize
        from germline.train.objectives import pack, selected_logits

        tok = tokenize(batch, self.tokenizer, self.max_length, self.system_prompt)
        # A system-prompt teacher reads its own prompt; the completion is the same tokens.
        teacher_prompts = tok.teacher_prompt_ids or tok.prompt_ids
        if self.vllm is not None:
            t_lp, t_top = _flat(self.vllm.score(teacher_prompts, tok.completion_ids,
                                                adapter=self.teacher_adapter))  # fmt: skip
            r_lp, r_top = _flat(self.vllm.score(tok.prompt_ids, tok.completion_ids,
                                                adapter=False))  # fmt: skip
        else:
            pad = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else 0
            student_side, targets = pack(tok.prompt_ids, tok.completion_ids, pad)
            teacher_side, _ = pack(teacher_prompts, tok.completion_ids, pad)
            targets = targets.to(self.device)
            with torch.inference_mode():
                t_lp, t_top = _scored(
                    selected_logits(self.teacher, teacher_side.to(self.device)), targets
                )
                r_lp, r_top = _scored(
                    selected_logits(self.reference, student_side.to(self.device)), targets
                )
        columns: dict[str, list] = {name: [] for name in AUDIT_SCHEMA.names}
        start = 0
        for pid, ids in zip(batch.column("prompt_id").to_pylist(), tok.completion_ids,
                            strict=True):  # fmt: skip
            span = slice(start, start + len(ids))  # this row's positions in the flat lists
            start = span.stop
            row = score_row(ids, t_lp[span], r_lp[span], t_top[span], r_top[span])
            columns["prompt_id"].append(pid)
            for name in ("tokens", "teacher_ll", "reference_ll", "log_ratio", "ratio_per_token",
                         "divergence", "token_ratios"):  # fmt: skip
                columns[name].append(getattr(row, name))
            columns["token_ids"].append(list(ids))
            columns["reference_top"].append(r_top[span])
        return pa.table(columns, schema=AUDIT_SCHEMA)


def _scored(logits, targets) -> tuple[list[float], list[int]]:
    """Each target's log-probability and the most likely token, per completion position."""
    import torch

    logp = torch.log_softmax(logits.float(), dim=-1)
    picked = logp.gather(1, targets.unsqueeze(1)).squeeze(1)
    return picked.tolist(), logp.argmax(dim=-1).tolist()


def _flat(rows: list[tuple[list[float], list[int]]]) -> tuple[list[float], list[int]]:
    """Per-row (log-probabilities, top tokens) as one flat list each, rows in order."""
    return [x for lp, _ in rows for x in lp], [t for _, top in rows for t in top]


def _vllm_engine(teacher_dir, reference_dir):
    """One vLLM engine that scores both sides: a LoRA teacher on its base (the adapter on for
    the teacher, off for the reference), or a system-prompt teacher, which has the
    reference's weights. Any other pair needs two engines: refused, with the way out."""
    from pathlib import Path

    from germline.engines import EngineError, adapter_base
    from germline.engines.vllm_engine import VLLMEngine

    same = Path(teacher_dir).resolve() == Path(reference_dir).resolve()
    if same:
        return VLLMEngine(Path(reference_dir)), False
    base = adapter_base(Path(teacher_dir))
    engine = VLLMEngine(Path(teacher_dir)) if base is not None else None
    if engine is None or Path(engine.base).resolve() != Path(reference_dir).resolve():
        if engine is not None:
            engine.close()
        raise EngineError(
            f"--engine vllm scores a LoRA teacher and its own base on one engine; the teacher "
            f"{teacher_dir} is not an adapter of the reference {reference_dir} "
            "(use --engine transformers)"
        )
    return engine, True
