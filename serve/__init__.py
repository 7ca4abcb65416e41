"""germline's serving floor: inference engines (transformers, vLLM) behind one interface.

The generation pipeline and (later) the Ray Serve app both talk to an `Engine`; which one runs
is a config key, never an `if gpu:` in the callers. Imports only the lineage floor, and only
lazily imports the heavy engine libraries, so `import germline.serve` stays cheap.
"""

from germline.serve.engine import (
    ENGINES,
    Engine,
    EngineError,
    Generation,
    SamplingParams,
    load_engine,
    resolve_model_dir,
)

__all__ = [
    "ENGINES",
    "Engine",
    "EngineError",
    "Generation",
    "SamplingParams",
    "load_engine",
    "resolve_model_dir",
]
