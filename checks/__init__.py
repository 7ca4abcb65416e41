"""germline's checks floor: what vets generated data before it reaches the lake.

Row filters first (format, count, value range, banned values, trait words); expectation suites,
trait probes and statistics join here later. Imports nothing from the floors above it.
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
