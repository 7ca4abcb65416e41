"""The errors of the lineage graph: bad input to it, said in one line.

`LineageError` is germline's `InputError` for the graph (an unknown or ambiguous node, an
edge its rules forbid, a cycle, a table that is not a lineage table), so the command line
exits with code 2 on it like on any other input error. Lookups raise the two subclasses below,
so a caller that may register a missing model can tell "no such node" from "several".
"""

from germline.core.errors import InputError


class LineageError(InputError):
    """Bad input to the lineage graph: unknown id, invalid edge, foreign table, and so on."""


class UnknownNode(LineageError):
    """No node has this id, id prefix or name."""


class AmbiguousNode(LineageError):
    """Several nodes answer to this id prefix or name."""
