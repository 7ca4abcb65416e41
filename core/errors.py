"""The errors a user can act on, one type per kind of failure, mapped to exit codes in one place.

Every floor raises these (or a subclass) instead of bare ValueError/RuntimeError when the
cause lies with the caller, so the command line can print one line and exit with the error's
own code, and no code ever has to read an error's message to know what happened:

- `InputError` (exit 2): bad input, found before or while working: a config that does not
  validate, a name that cannot be a lake path, an unknown model or dataset, a tokenizer that
  does not fit, a request a model cannot serve. Each floor has its own subclass where callers
  need to tell them apart (`LineageError` for the graph, `EngineError` for the engines).
- `RunAborted` (exit 1): a run that stopped on purpose, such as a failed expectation under
  the "abort" policy. Not an input error: the input was valid, the data was not.
"""

from __future__ import annotations

import re

# A frame of a Rust backtrace as deltalake's errors carry it: "  12: start_thread" and its
# "      at ./nptl/pthread_create.c:442:8" source line, under an optional header.
_FRAME = re.compile(r"^\s+(\d+: |at \S+:\d+)|^\s*stack backtrace:\s*$")


class GermlineError(Exception):
    """Base of germline's own errors. `exit_code` is what the command line exits with."""

    exit_code = 1

    def __init__(self, message: str = "") -> None:
        super().__init__(message)
        self.message = message

    def __reduce__(self) -> tuple:
        # Rebuilt from the message it was made with: Ray ships a worker's exception to the
        # driver by pickling it, after appending its own retry notes to the arguments.
        return type(self), (self.message,)


class InputError(GermlineError, ValueError):
    """Bad input (config, name, model, dataset, request): the user fixes it and runs again.
    A ValueError too, so pydantic validators that raise it report a field error."""

    exit_code = 2


class RunAborted(GermlineError):
    """A run stopped on purpose: what it committed before stopping stays in the lake."""

    exit_code = 1


def plain(exc: BaseException | str) -> str:
    """An error's message as a user reads it: without the Rust backtrace frames deltalake
    appends (a dozen `N: <unknown>` lines after the one that says what went wrong)."""
    text = str(exc)
    return "\n".join(line for line in text.splitlines() if not _FRAME.match(line)).strip()
