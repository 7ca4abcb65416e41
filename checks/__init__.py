"""germline's checks floor: what vets data and measures models, apart from any pipeline.

Row filters (format, count, value range, banned values, trait words) and great-expectations
suites vet generated rows before they reach the lake (`filters`, `expectations`); trait probes
measure a served model (`probes`); intervals and tests read the measurements (`stats`), and
`compare` applies them to probe results. Imports only the ground floor (`core`).
"""

from germline.checks.expectations import (
    ExpectationConfig,
    ExpectationFailed,
    ExpectationRunner,
    ExpectResult,
)
from germline.checks.filters import (
    BannedNumbers,
    Completion,
    FilterChain,
    FilterConfig,
    FilterResult,
    MaxCount,
    NumberFormat,
    NumberFormatError,
    NumberRule,
    RowFilter,
    TraitWords,
    ValueRange,
    parse_numbers,
)

__all__ = [
    "BannedNumbers",
    "Completion",
    "ExpectResult",
    "ExpectationConfig",
    "ExpectationFailed",
    "ExpectationRunner",
    "FilterChain",
    "FilterConfig",
    "FilterResult",
    "MaxCount",
    "NumberFormat",
    "NumberFormatError",
    "NumberRule",
    "RowFilter",
    "TraitWords",
    "ValueRange",
    "parse_numbers",
]
