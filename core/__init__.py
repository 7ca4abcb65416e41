"""germline's ground floor: what every other floor stands on and nothing else.

The error types the command line maps to exit codes (`errors`), and the registry that lets a
new engine, prompt family or experiment kind be one new file (`registry`). Imports nothing of
germline.
"""

from germline.core.errors import GermlineError, InputError, RunAborted, plain
from germline.core.registry import Registry

__all__ = ["GermlineError", "InputError", "Registry", "RunAborted", "plain"]
