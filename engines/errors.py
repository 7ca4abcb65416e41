"""The engines' input error: a model or engine that cannot be loaded or cannot serve a call.

An `InputError` (exit 2 on the command line, a 400 from the server where a request caused it).
"""

from germline.core.errors import InputError


class EngineError(InputError):
    """A model or engine that cannot be loaded, or a call it cannot serve: names what and why,
    for a one-line error."""
