"""One interface for every inference engine: prompts in, completions with token counts out.

An engine is built once per worker (an actor in the generation pipeline, a replica in the Ray
Serve app) from a model folder: a full model, or a LoRA adapter whose `adapter_config.json`
names its base. Prompts arrive as chat messages rendered by the model's own chat template, so
a system-prompt teacher and a plain one go through the same code.
"""

from __future__ import annotations

import importlib
import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Protocol

# name -> "module:Class"; imported lazily so a CPU machine never imports vllm.
ENGINES: dict[str, str] = {
    "transformers": "germline.serve.transformers_engine:TransformersEngine",
    "vllm": "germline.serve.vllm_engine:VLLMEngine",
}


class EngineError(ValueError):
    """A model or engine that cannot be loaded: names what and why, for a one-line error."""


@dataclass(frozen=True)
class SamplingParams:
    """How completions are sampled; recorded on every generated row."""

    temperature: float = 1.0
    top_p: float = 1.0
    max_tokens: int = 48
    seed: int = 0  # base seed: each request's seed is derived from it and the prompt id

    def to_dict(self) -> dict[str, float | int]:
        return asdict(self)


@dataclass(frozen=True)
class Generation:
    """One completion and what it cost."""

    text: str
    prompt_tokens: int
    completion_tokens: int
    finish_reason: str  # "stop" (EOS or a stop string) or "length" (hit max_tokens)


class Engine(Protocol):
    """What every engine does. `generate` is called with a batch; engines batch internally."""

    name: str

    def generate(
        self,
        prompts: list[list[dict[str, str]]],
        params: SamplingParams,
        seeds: list[int],
    ) -> list[Generation]:
        """Complete each chat (a list of {"role", "content"} messages) once. `seeds[i]` is
        request i's sampling seed; an engine that cannot seed per request seeds per batch."""
        ...


def resolve_model_dir(path: str | Path) -> Path:
    """A local model folder, checked to hold a model or an adapter, else EngineError."""
    folder = Path(path).expanduser()
    if not folder.is_dir():
        raise EngineError(f"model folder {folder} does not exist")
    if not ((folder / "config.json").exists() or (folder / "adapter_config.json").exists()):
        raise EngineError(f"{folder} holds neither config.json nor adapter_config.json")
    return folder


def adapter_base(folder: Path) -> str | None:
    """The base model an adapter folder names, or None for a full model folder."""
    config = folder / "adapter_config.json"
    if not config.exists():
        return None
    base = json.loads(config.read_text()).get("base_model_name_or_path")
    if not base:
        raise EngineError(f"{config} names no base_model_name_or_path")
    return str(base)


def load_engine(kind: str, model_dir: str | Path, **options: object) -> Engine:
    """Build the engine `kind` ("transformers" or "vllm") over the model at `model_dir`."""
    try:
        target = ENGINES[kind]
    except KeyError:
        raise EngineError(f"unknown engine {kind!r}: choose one of {', '.join(ENGINES)}") from None
    module_name, _, cls_name = target.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        hint = " (install the vllm extra on a GPU node: pip install 'germline[vllm]')"
        raise EngineError(
            f"engine {kind!r} is not available: {exc}{hint if kind == 'vllm' else ''}"
        ) from None
    return getattr(module, cls_name)(resolve_model_dir(model_dir), **options)
