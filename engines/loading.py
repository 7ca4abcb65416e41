"""Model folders and how a model is loaded from one, for every engine and for training.

A model folder holds a full model (`config.json`) or a LoRA adapter (`adapter_config.json`
naming its base). The transformers engine, the server's transformers path and Ray Train's
workers all load through `load_causal_lm`, so a model loads the same way wherever it runs.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from germline.engines.errors import EngineError

FULL_MODEL = "config.json"
ADAPTER = "adapter_config.json"


def resolve_model_dir(path: str | Path) -> Path:
    """A local model folder, checked to hold a model or an adapter, else EngineError."""
    folder = Path(path).expanduser()
    if not folder.is_dir():
        raise EngineError(f"model folder {folder} does not exist")
    if not ((folder / FULL_MODEL).exists() or (folder / ADAPTER).exists()):
        raise EngineError(f"{folder} holds neither {FULL_MODEL} nor {ADAPTER}")
    return folder


def adapter_base(folder: Path) -> str | None:
    """The base model an adapter folder names, or None for a full model folder."""
    config = folder / ADAPTER
    if not config.exists():
        return None
    base = json.loads(config.read_text()).get("base_model_name_or_path")
    if not base:
        raise EngineError(f"{config} names no base_model_name_or_path")
    return str(base)


def load_causal_lm(model_dir: Path, dtype: str = "float32") -> tuple[Any, Any]:
    """The model at `model_dir` and its tokenizer; an adapter folder is loaded onto the base it
    names and merged, so callers get one plain model either way (EngineError if unloadable)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch_dtype = getattr(torch, dtype, None)
    if not isinstance(torch_dtype, torch.dtype):
        raise EngineError(f"unknown dtype {dtype!r}")
    base = adapter_base(model_dir)
    try:
        tokenizer = AutoTokenizer.from_pretrained(model_dir)
        model = AutoModelForCausalLM.from_pretrained(base or model_dir, dtype=torch_dtype)
        if base is not None:
            from peft import PeftModel

            model = PeftModel.from_pretrained(model, model_dir).merge_and_unload()
    except (OSError, ValueError) as exc:
        raise EngineError(f"cannot load the model at {model_dir}: {exc}") from None
    return model, tokenizer
