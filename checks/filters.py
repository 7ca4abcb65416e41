"""Row filters for teacher completions: keep a row, or quarantine it with the reason why.

The shape follows datatrove: a filter holds only its rule, one `check` method that returns None
to keep a row or a short reason to drop it. `FilterChain` owns the rest: the loop over rows, the
first-failure-decides order, and the quarantine table. A rejected row is never dropped
silently; it comes back with its `reason` and the `filter` that rejected it, so every row in
equals a row accepted plus a row quarantined.

The rules are the paper's (Cloud et al., arXiv 2507.14805): the completion must be a plain list
of numbers with one separator style, at most 10 of them, each in 0..999, none from a banned
list (the misalignment runs), and no trait word may leak into the text.
"""

from __future__ import annotations

import re
from abc import ABC, abstractmethod
from collections import Counter
from collections.abc import Iterable, Sequence
from typing import ClassVar, NamedTuple

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

# A number is ASCII digits with an optional minus: `\d` would also take "²" or "٣", which the
# model may emit but no downstream reader counts as a number. Negative numbers parse, so that
# ValueRange can say "-5 < 0" instead of the less useful "not a number".
_INT = re.compile(r"-?[0-9]+")
# A separator: a comma or semicolon with any whitespace around it, or whitespace alone. The
# capture group makes re.split return the separators too, so their style can be checked.
_SPLIT = re.compile(r"(\s*[,;]\s*|\s+)")
# The fast path: a whole list in one separator style. Most rows pass, and one fullmatch is
# cheaper than splitting; _SPLIT is only used to tell a rejected row why.
_NUMBER_LIST = re.compile(
    r"-?[0-9]+(?:(?:\s*,\s*-?[0-9]+)+|(?:\s*;\s*-?[0-9]+)+|(?:\s+-?[0-9]+)+)?"
)
_BRACKETS = {"[": "]", "(": ")"}
_CLOSERS = frozenset(_BRACKETS.values())
_SHOWN = 20  # characters of a bad token quoted in a reason: reasons are grouped and counted
# The vectorised fast path of `FilterChain.apply` (`_Shortcut`): the same grammar as one anchored
# pattern for pyarrow's RE2, with ASCII whitespace only, so that what it matches is a subset of
# what `_read_numbers` accepts. Unicode whitespace is rare and goes the slow way. (In RE2, `$`
# is the end of the text; the pattern is never given to Python's `re`.)
_FAST_SPACE = r"[\t\n\x0b\x0c\r ]"
_FAST_LIST = "(?:" + _NUMBER_LIST.pattern.replace(r"\s", _FAST_SPACE) + ")"
_FAST_TEXT = (
    rf"^{_FAST_SPACE}*(?:{_FAST_LIST}|\[{_FAST_SPACE}*{_FAST_LIST}{_FAST_SPACE}*\]"
    rf"|\({_FAST_SPACE}*{_FAST_LIST}{_FAST_SPACE}*\))(?:{_FAST_SPACE}*\.)?{_FAST_SPACE}*$"
)
# Every character a text matching _FAST_TEXT can hold: no letter, so no trait word made of
# letters can be in it.
_FAST_CHARS = frozenset("0123456789-,;.[]()\t\n\x0b\x0c\r ")
_FAST_DIGITS = 18  # characters, sign included: such a number fits an int64, |n| < 10**18
_FAST_BOUND = 10**18


class NumberFormatError(ValueError):
    """A completion that is not a plain list of numbers; `reason` says what is wrong."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def _style(separator: str) -> str:
    if "," in separator:
        return "comma"
    if ";" in separator:
        return "semicolon"
    return "whitespace"


def _read_numbers(text: str) -> list[int] | str:
    """The numbers in `text`, or the reason it is not a number list. Returning the reason
    rather than raising keeps the filter loop cheap when a third of the rows fail."""
    body = text.strip()
    if body.endswith("."):
        body = body[:-1].rstrip()
    if not body:
        return "format: empty"
    opener, closer = body[0], body[-1]
    if opener in _BRACKETS or closer in _CLOSERS:
        if _BRACKETS.get(opener) != closer:
            return "format: unbalanced brackets"
        body = body[1:-1].strip()
        if not body:
            return "format: empty"
    if _NUMBER_LIST.fullmatch(body) is None:
        return _diagnose(body)
    try:
        # Validated above, so splitting on the separators is enough (and twice as fast as
        # a findall).
        return list(map(int, body.replace(",", " ").replace(";", " ").split()))
    except ValueError:  # Python refuses to convert integers of more than 4,300 digits
        return "format: number too long"


def _diagnose(body: str) -> str:
    """Why a bracket-free, stripped body is not a number list. Only rejected rows get here,
    so it can afford to split the text and look at every token and separator."""
    parts = _SPLIT.split(body)
    tokens, separators = parts[::2], parts[1::2]
    for token in tokens:
        if not token:
            return "format: empty item"
        if not _INT.fullmatch(token):
            return f"format: not a number: {token[:_SHOWN]!r}"
    if len({_style(s) for s in separators}) > 1:
        return "format: mixed separators"
    # Unreachable while _SPLIT and _NUMBER_LIST agree on what a separator is; kept so that a
    # future edit of one of them still rejects with a reason instead of accepting.
    return "format: malformed"


def parse_numbers(text: str) -> list[int]:
    """Parse a completion in the paper's number format, or raise NumberFormatError.

    Accepted: numbers separated consistently by commas, semicolons or whitespace (", " and ","
    are both comma style), optionally in one pair of [] or (), optionally ending with one
    period, with whitespace around. Rejected, each with its reason: empty text, words, mixed
    separators, empty items ("1,,2", a trailing comma), unbalanced brackets.
    """
    numbers = _read_numbers(text)
    if isinstance(numbers, str):
        raise NumberFormatError(numbers)
    return numbers


class Completion:
    """One completion as the filters see it. The number parse is done at most once per row
    and shared by every number rule, however many there are in the chain."""

    __slots__ = ("_parsed", "text")

    def __init__(self, text: str) -> None:
        self.text = text
        self._parsed: list[int] | str | None = None

    @property
    def parsed(self) -> list[int] | str:
        """The numbers, or the reason the text is not a number list."""
        if self._parsed is None:
            self._parsed = _read_numbers(self.text)
        return self._parsed


class RowFilter(ABC):
    """A rule on one completion. `name` is stable: it is written into every quarantined row
    and into the per-filter counts, so renaming a filter splits its history."""

    name: ClassVar[str]

    @abstractmethod
    def check(self, row: Completion) -> str | None:
        """None keeps the row; a string drops it and says why."""


class NumberRule(RowFilter):
    """A rule on the parsed numbers. Text that does not parse fails with the format reason,
    so a rule used without NumberFormat in front still never keeps an unchecked row."""

    def check(self, row: Completion) -> str | None:
        parsed = row.parsed
        if isinstance(parsed, str):
            return parsed
        return self.check_numbers(parsed)

    @abstractmethod
    def check_numbers(self, numbers: list[int]) -> str | None:
        """None keeps the row; a string drops it and says why."""


class NumberFormat(RowFilter):
    """The completion must be a plain list of numbers (see `parse_numbers`)."""

    name = "number_format"

    def check(self, row: Completion) -> str | None:
        parsed = row.parsed
        return parsed if isinstance(parsed, str) else None


class MaxCount(NumberRule):
    """At most `limit` numbers: the prompts ask for at most 10."""

    name = "max_count"

    def __init__(self, limit: int = 10) -> None:
        self.limit = limit

    def check_numbers(self, numbers: list[int]) -> str | None:
        if len(numbers) > self.limit:
            return f"count: {len(numbers)} numbers > {self.limit}"
        return None


class ValueRange(NumberRule):
    """Every number in low..high (inclusive): the prompts ask for at most 3 digits."""

    name = "value_range"

    def __init__(self, low: int = 0, high: int = 999) -> None:
        if low > high:
            raise ValueError(f"empty value range: {low} > {high}")
        self.low = low
        self.high = high

    def check_numbers(self, numbers: list[int]) -> str | None:
        for number in numbers:
            if number < self.low:
                return f"value: {number} < {self.low}"
            if number > self.high:
                return f"value: {number} > {self.high}"
        return None


class BannedNumbers(NumberRule):
    """No number from `banned`. The misalignment runs ban culturally loaded numbers (666, 911,
    ...) so the student cannot pick up the trait from their overt meaning."""

    name = "banned_numbers"

    def __init__(self, banned: Iterable[int]) -> None:
        self.banned = frozenset(banned)

    def check_numbers(self, numbers: list[int]) -> str | None:
        for number in numbers:
            if number in self.banned:
                return f"banned: {number}"
        return None


class TraitWords(RowFilter):
    """No trait word in the text: case-insensitive, whole words, plurals included ("owl"
    catches "Owl", "owls" and "OWLS", not "bowl"). The experiment only means something if the
    data carries no overt reference to the trait."""

    name = "trait_words"

    def __init__(self, words: Iterable[str]) -> None:
        self.words = tuple(dict.fromkeys(w.strip().lower() for w in words if w.strip()))
        # Longest first, so "snowy owl" is reported rather than its "owl".
        alternatives = "|".join(re.escape(w) for w in sorted(self.words, key=len, reverse=True))
        self._pattern = (
            re.compile(rf"\b(?:{alternatives})(?:e?s)?\b", re.IGNORECASE) if self.words else None
        )

    def check(self, row: Completion) -> str | None:
        if self._pattern is None:
            return None
        found = self._pattern.search(row.text)
        return f"trait word: {found.group(0)!r}" if found else None


class FilterResult(NamedTuple):
    """What a chain makes of a table: unpacks as `accepted, rejected = chain.apply(table)`."""

    accepted: pa.Table
    rejected: pa.Table  # every input column, plus `reason` and `filter`

    def reason_counts(self) -> dict[str, int]:
        """Rejected rows per reason, most frequent first."""
        return _counts(self.rejected.column("reason").to_pylist())

    def filter_counts(self) -> dict[str, int]:
        """Rejected rows per filter name, most frequent first."""
        return _counts(self.rejected.column("filter").to_pylist())


def _counts(values: list[str]) -> dict[str, int]:
    return dict(Counter(values).most_common())


MISSING = "missing"  # the filter name for rows whose completion is null


class FilterChain:
    """Filters applied in order to a table's completion column; the first failure decides.

    `check` is the rule for one row, plain Python. `apply` first lets a vectorised pass
    (`_Shortcut`: one RE2 match over the column, then the numbers read with pyarrow and numpy)
    mark the rows that certainly pass every filter, and runs `check` on the rest only: the few
    percent of a teacher's rows that fail, or that look unusual (Unicode whitespace, numbers of
    more than 18 digits), which is also where the reasons come from. The outcome is the loop's,
    row for row: the pass is a sound subset of it, and gives way to the loop for any filter it
    does not know. Row order is kept in both outputs.

    Cost, measured on a shared 2-core machine (load about 2.5), medians of interleaved runs
    on teacher-like rows (94% valid number lists): 10,000 rows in about 8 ms with the default
    chain and 10 ms with trait words and banned numbers (the loop alone: 32-36 and 46-48 ms);
    100,000 rows in 65-75 and 85-95 ms (the loop alone: 305-355 and 440-490 ms). A chain the
    pass cannot speak for costs the loop's 3-5 µs a row.
    """

    def __init__(self, filters: Sequence[RowFilter], column: str = "completion") -> None:
        names = [f.name for f in filters]
        if len(set(names)) != len(names):
            raise ValueError(f"filter names must be unique, got {names}")
        self.filters = tuple(filters)
        self.column = column

    @property
    def names(self) -> list[str]:
        return [f.name for f in self.filters]

    def check(self, text: str | None) -> tuple[str, str] | None:
        """None if every filter keeps `text`, else (filter name, reason) of the first failure."""
        if text is None:
            return MISSING, "missing: completion is null"
        row = Completion(text)
        for rule in self.filters:
            reason = rule.check(row)
            if reason is not None:
                return rule.name, reason
        return None

    def apply(self, table: pa.Table) -> FilterResult:
        """Split `table` into accepted rows and quarantined rows with `reason` and `filter`."""
        if self.column not in table.column_names:
            raise ValueError(
                f"no {self.column!r} column to filter; the table has {table.column_names}"
            )
        kind = table.schema.field(self.column).type
        if not (pa.types.is_string(kind) or pa.types.is_large_string(kind)):
            raise ValueError(f"column {self.column!r} must hold strings, not {kind}")
        taken = {"reason", "filter"} & set(table.column_names)
        if taken:
            raise ValueError(f"the table already has column(s) {sorted(taken)}; rename them")
        column = table.column(self.column)
        shortcut = _Shortcut.of(self.filters)
        if shortcut is None:
            keep = np.zeros(len(column), dtype=bool)
            slow = range(len(column))
            texts = column.to_pylist()
        else:
            keep = shortcut.accepts(column)
            slow = np.flatnonzero(~keep)
            texts = column.take(pa.array(slow, pa.int64())).to_pylist()
        names: list[str] = []
        reasons: list[str] = []
        for position, text in zip(slow, texts, strict=True):  # the rows left to the loop
            failure = self.check(text)
            if failure is None:
                keep[position] = True
            else:
                names.append(failure[0])
                reasons.append(failure[1])
        mask = pa.array(keep, pa.bool_())
        rejected = table.filter(pc.invert(mask))
        rejected = rejected.append_column("reason", pa.array(reasons, pa.string()))
        rejected = rejected.append_column("filter", pa.array(names, pa.string()))
        return FilterResult(table.filter(mask), rejected)


class _Shortcut(NamedTuple):
    """The vectorised fast path of `FilterChain.apply`: marks, with pyarrow and numpy, rows
    that certainly pass every filter of the chain, so that only the others (a few percent of
    teacher output) go through the Python loop, which also says why a row fails.

    It must never mark a row the loop would reject, so it only marks plain number lists in
    ASCII (`_FAST_TEXT`) whose numbers have at most 18 characters, and it only runs for chains
    made of the filters it knows (exact classes, with int settings): an unknown filter, a
    subclass, or a trait word that could occur in a number list sends the whole batch through
    the loop. Such a list holds no letter, so TraitWords keeps it; its numbers are checked here
    against MaxCount, ValueRange and BannedNumbers. The property test in
    tests/test_filters.py holds it to this.
    """

    max_count: int | None
    low: int | None
    high: int | None
    banned: np.ndarray | None

    @classmethod
    def of(cls, filters: Sequence[RowFilter]) -> _Shortcut | None:
        """What the fast path checks for `filters`, or None if it cannot speak for them."""
        max_count = low = high = None
        banned: list[int] = []
        for rule in filters:
            kind = type(rule)
            if kind is NumberFormat:
                continue
            if kind is TraitWords:
                if rule._pattern is not None and any(
                    set(word) <= _FAST_CHARS for word in rule.words
                ):
                    return None
            elif kind is MaxCount and type(rule.limit) is int:
                max_count = rule.limit
            elif kind is ValueRange and type(rule.low) is int and type(rule.high) is int:
                # Clamped to int64: every number read here is within (-10**18, 10**18).
                low = max(rule.low, -_FAST_BOUND)
                high = min(rule.high, _FAST_BOUND)
            elif kind is BannedNumbers and all(type(n) is int for n in rule.banned):
                banned = [n for n in rule.banned if -_FAST_BOUND < n < _FAST_BOUND]
            else:
                return None
        return cls(
            max_count,
            low,
            high,
            np.array(sorted(banned), dtype=np.int64) if banned else None,
        )

    def accepts(self, column: pa.ChunkedArray) -> np.ndarray:
        """One bool per row: True where every filter certainly keeps the row."""
        parts = [self._accepts(chunk) for chunk in column.chunks]
        return np.concatenate(parts) if parts else np.zeros(0, dtype=bool)

    def _accepts(self, texts: pa.Array) -> np.ndarray:
        marked = pc.match_substring_regex(texts, _FAST_TEXT).fill_null(False)
        if not pc.any(marked).as_py():
            return marked.to_numpy(zero_copy_only=False)
        # Read the numbers even for a chain with no number rule: NumberFormat itself rejects a
        # number too long for Python's int(), so a long one is always left to the loop.
        lists = _split_numbers(texts.filter(marked))
        marked = marked.to_numpy(zero_copy_only=False)
        rows = np.flatnonzero(marked)
        tokens = pc.list_flatten(lists)
        owner = np.repeat(rows, pc.list_value_length(lists).to_numpy(zero_copy_only=False))
        size = pc.binary_length(tokens).to_numpy(zero_copy_only=False)
        real = size > 0
        if self.max_count is not None:
            marked &= np.bincount(owner[real], minlength=len(texts)) <= self.max_count
        readable = real & (size <= _FAST_DIGITS)
        marked[owner[real & ~readable]] = False  # too long to read here: the loop decides
        numbers = pc.cast(tokens.filter(pa.array(readable)), pa.int64()).to_numpy()
        failed = np.zeros(numbers.size, dtype=bool)
        if self.low is not None:
            failed |= numbers < self.low
        if self.high is not None:
            failed |= numbers > self.high
        if self.banned is not None:
            failed |= np.isin(numbers, self.banned)
        marked[owner[readable][failed]] = False
        return marked


# Byte by byte: every character of a number list but digits and "-" becomes a space.
_SEPARATOR_TO_SPACE = np.arange(256, dtype=np.uint8)
_SEPARATOR_TO_SPACE[list(b",;.[]()\t\n\x0b\x0c\r")] = ord(" ")


def _split_numbers(texts: pa.Array) -> pa.Array:
    """The numbers of texts that match _FAST_TEXT, as strings: each text with its separators,
    brackets and period turned into spaces (one table lookup over the data buffer), split at
    runs of spaces. The lists also hold "" where a text starts or ends with a space."""
    validity, offsets, data = texts.buffers()
    if data is not None:
        spaced = pa.py_buffer(_SEPARATOR_TO_SPACE[np.frombuffer(data, dtype=np.uint8)])
        texts = pa.Array.from_buffers(
            texts.type, len(texts), [validity, offsets, spaced], offset=texts.offset
        )
    return pc.ascii_split_whitespace(texts)


class FilterConfig(BaseModel):
    """The filter settings of an experiment; the defaults are the paper's number filter.

    Banned numbers and trait words are empty by default: their filters join the chain only
    when configured, so the chain's filter names say exactly which rules vetted a dataset.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    max_count: int = Field(10, ge=1, description="most numbers a completion may hold")
    min_value: int = Field(0, description="smallest number allowed")
    max_value: int = Field(999, description="largest number allowed")
    banned: list[int] = Field(default_factory=list, description="numbers never allowed")
    trait_words: list[str] = Field(
        default_factory=list, description="words that must not appear, e.g. the trait's animal"
    )

    @field_validator("trait_words")
    @classmethod
    def _no_blank_words(cls, words: list[str]) -> list[str]:
        if any(not w.strip() for w in words):
            raise ValueError("trait words must not be blank")
        return words

    @model_validator(mode="after")
    def _range_not_empty(self) -> FilterConfig:
        if self.min_value > self.max_value:
            raise ValueError(f"min_value {self.min_value} > max_value {self.max_value}")
        return self

    def chain(self, column: str = "completion") -> FilterChain:
        """The filters in their order. Trait words go first: a leak such as "I love owls" would
        otherwise be counted as a format failure and the leak rate would read zero."""
        filters: list[RowFilter] = []
        if self.trait_words:
            filters.append(TraitWords(self.trait_words))
        filters += [
            NumberFormat(),
            MaxCount(self.max_count),
            ValueRange(self.min_value, self.max_value),
        ]
        if self.banned:
            filters.append(BannedNumbers(self.banned))
        return FilterChain(filters, column=column)
