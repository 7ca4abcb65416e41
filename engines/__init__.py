"""germline's engines floor: inference engines and model loading, for every step that runs a model.

Generation runs a batch `Engine` (transformers on CPU, vLLM on GPU nodes) in each of its Ray
Data workers; the server runs a `ServingEngine` of the same kind in each model-pool replica;
training loads its base and teacher with `load_causal_lm`. One room for all three, so training
never imports the HTTP app and the app never reaches into training. Which engine runs is a
config key, looked up in a registry (`ENGINES`, `SERVING`): a new engine is one new file.

Imports only the ground floor (`core`). The heavy libraries (torch, transformers, vLLM) load
inside the functions that use them, so importing this package stays cheap and works without
vLLM installed.
"""

from germline.engines.engine import ENGINES, Engine, Generation, load_engine
from germline.engines.errors import EngineError
from germline.engines.loading import adapter_base, load_causal_lm, resolve_model_dir
from germline.engines.sampling import RequestParams, SamplingParams

__all__ = [
    "ENGINES",
    "Engine",
    "EngineError",
    "Generation",
    "RequestParams",
    "SamplingParams",
    "adapter_base",
    "load_causal_lm",
    "load_engine",
    "resolve_model_dir",
]
