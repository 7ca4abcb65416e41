"""One interface for every batch inference engine: prompts in, completions with token counts out.

An engine is built once per worker (an actor in the generation pipeline) from a model folder:
a full model, or a LoRA adapter whose `adapter_config.json` names its base. Prompts arrive as
chat messages rendered by the model's own chat template, so a system-prompt teacher and a
plain one go through the same code.

Engines are registered by name in `ENGINES` (`@ENGINES.register("vllm")` in a module of this
package whose name ends with `_engine`): a new engine is one new file, and which one runs is a
config key, never an `if gpu:` in the callers.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from germline.core.registry import Registry
from germline.engines.errors import EngineError
from germline.engines.loading import resolve_model_dir
from germline.engines.sampling import SamplingParams

Chat = list[dict[str, str]]  # {"role", "content"} messages, rendered by the chat template


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
        self, prompts: list[Chat], params: SamplingParams, seeds: list[int]
    ) -> list[Generation]:
        """Complete each chat (a list of {"role", "content"} messages) once. `seeds[i]` is
        request i's sampling seed: a completion depends on its prompt and seed alone, not on
        the other requests of its batch (both shipped engines seed per request)."""
        ...


class EngineKind(Protocol):
    """What a registered engine class offers before it is built."""

    # Whether one worker may drop an engine of this kind and build another on a different
    # model (the generation pipeline then carries several teachers' jobs through the same
    # workers); an engine without the attribute gets a pipeline per job.
    swaps_models: bool

    def __call__(self, model_dir: Path, **options: object) -> Engine: ...

    @staticmethod
    def check_available() -> None:
        """Raise EngineError now (on the driver) if this machine cannot run the engine, so a
        missing library is a one-line error before any worker starts."""
        ...


ENGINES: Registry[EngineKind] = Registry(
    "engine", "germline.engines", suffix="_engine", error=EngineError
)


def load_engine(kind: str, model_dir: str | Path, **options: object) -> Engine:
    """Build the engine `kind` ("transformers", "vllm", ...) over the model at `model_dir`."""
    engine = ENGINES.get(kind)
    engine.check_available()
    return engine(resolve_model_dir(model_dir), **options)
