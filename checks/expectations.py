"""The expect stage: a great-expectations suite validates every batch of teacher completions.

The row filters (`germline.checks.filters`) are the paper's rules, written for speed. The suite
is the batch's contract, declared as data: identity (every prompt id present and unique in the
batch), completeness (the teacher stopped on its own, within its token budget) and format (a
plain number list of bounded length). Declared rather than coded, it can be hashed
(`ExpectationConfig.suite_dict`) and its per-batch result summarised into the Delta commit
metadata, so every dataset version says which contract vetted it and how the batch fared.

As in the filters, a row is never dropped silently. Every expectation is a column map
expectation, so GX names the exact rows that failed; a failing row goes to the quarantine table
with the first expectation it failed, in suite order, as its reason. Under policy "abort" a
failing batch raises `ExpectationFailed` instead: for runs where any bad row means a broken
teacher or engine, not a noisy sample.

GX 1.24 behaviours this module works around, each checked on this machine:
- Results do not come back in suite order (GX groups them by column), so they are matched to
  the suite's expectations by id.
- Row identity uses the row position (the default pandas index), not
  `unexpected_index_column_names=["prompt_id"]`: prompt ids cannot tell duplicates apart, and a
  null id cannot name its row at all.
- `expect_column_values_to_be_unique` flags every copy of a duplicated value; the first copy is
  kept here, so the summary's `unexpected_count` counts all copies and `quarantined` the rows
  actually rejected.
- The map expectations used here, not-null aside, skip null values, so each column a rule
  reads is guarded by a not-null expectation in front of it; otherwise a null finish_reason
  would pass as "stop".
- The regex expectation runs pandas `str.contains` (a search, not a match), so the pattern is
  anchored. Under pandas 3 that goes to pyarrow's RE2 unless the pattern needs Python's `re`,
  row by row; a `\\s` always does (RE2's misses "\\x0b" and Unicode spaces). The pattern spells
  Python's whitespace out as a class instead, so it runs on RE2 and still means exactly what it
  means in `filters.py`.
- A column map expectation on numbers compares numpy int64 or float64 columns vectorised, any
  other dtype one value at a time in Python; narrower integer columns are widened to int64.
- Loading a batch hashes all of it into a "pandas_data_fingerprint" marker that nothing reads;
  this runner's execution engine skips that (`_skip_fingerprint`). COMPLETE results are asked
  for without the failing values' counts and the query text, which nothing here reads either.
- `ValidationDefinition.run` stores every result in the context's in-memory store, which would
  grow without bound over a run, and `Batch.validate` loads the batch twice. Batches are run
  through the V1 `Validator` that both use inside: one load, nothing stored.
- Importing GX takes 3-4 s, so it is imported when the first runner is built, not when
  `germline.checks` is; analytics are off, progress bars off, GX logging at ERROR. (1.24.1 ships
  no analytics client and made no network attempt here.)

Cost, measured on this 2-core machine (pandas 3.1, pyarrow 26, GX 1.24.1, the 9-expectation
suite with max_tokens set), medians of interleaved `validate()` calls on the rows the filters
kept, with the machine shared (load average about 2.5): 1,000 rows in 65-70 ms, 10,000 rows in
60-75 ms, 100,000 rows in 90-110 ms (before the work-arounds above: 70-76, 76-94 and 235-275
ms); 10,000 rows a third malformed in about 86 ms (108). Nearly all of it is GX's fixed cost,
building and resolving its metric graph on every validation (55-65 ms for 9 expectations,
whatever the rows); a row costs about 0.4 µs. So validate whole batches, not slices of them.
This module's own work (the pandas conversion of the columns the suite reads, the split, the
summary) is about 2 ms at 10,000 rows. A runner builds in 15-30 ms once GX is imported.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections import Counter
from collections.abc import Callable
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Literal, NamedTuple

import numpy as np
import pyarrow as pa
from pydantic import BaseModel, ConfigDict, Field

from germline.checks.filters import _NUMBER_LIST
from germline.core.errors import RunAborted

if TYPE_CHECKING:
    from great_expectations.core import ExpectationSuiteValidationResult

# Whitespace as Python sees it (`\s` in a str pattern, `str.isspace`, what `str.strip` strips),
# spelled out as literal characters. Pandas hands a pattern with `\s` to Python's `re`, row by
# row, because RE2's `\s` is only [\t\n\f\r ]; this class means the same in both engines, so the
# pattern below runs on pyarrow's RE2. tests/test_expectations.py checks the set.
_SPACE = "[\t\n\x0b\x0c\r\x1c-\x1f \x85\xa0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000]"
# The filters' number list (one separator style), optionally in one pair of [] or (), optionally
# followed by one period, with whitespace around: what `filters.parse_numbers` accepts, as one
# anchored pattern. Built from the filters' own pattern so that the two cannot drift apart.
_LIST = "(?:" + _NUMBER_LIST.pattern.replace(r"\s", _SPACE) + ")"
NUMBER_LIST_REGEX = (
    rf"^{_SPACE}*(?:{_LIST}|\[{_SPACE}*{_LIST}{_SPACE}*\]|\({_SPACE}*{_LIST}{_SPACE}*\))"
    rf"(?:{_SPACE}*\.)?{_SPACE}*\Z"
)

_UNIQUE = "expect_column_values_to_be_unique"
_NOT_NULL = "expect_column_values_to_not_be_null"
# COMPLETE is the only result format that lists the failing rows (unexpected_index_list). The
# rest of what it adds is not read here: no counts of the failing values, no query text.
_RESULT_FORMAT = {
    "result_format": "COMPLETE",
    "partial_unexpected_count": 0,
    "return_unexpected_index_query": False,
}


class _Rule(NamedTuple):
    """One expectation of a suite, in the terms GX takes (`type`, `kwargs`)."""

    name: str  # short and stable: a quarantined row's `filter` is "expect:<name>"
    type: str  # the GX expectation type
    kwargs: dict[str, Any]  # the GX kwargs, `column` included

    @property
    def column(self) -> str:
        return self.kwargs["column"]

    @property
    def label(self) -> str:
        return f"{self.type}({self.column})"


class _ColumnType(NamedTuple):
    """What a column read by a suite must hold. Checked before GX runs: GX would cast a column
    of integers to text and let it match the number-list pattern."""

    description: str
    accepts: Callable[[pa.DataType], bool]


_ANY = _ColumnType("any type", lambda kind: True)
_TEXT = _ColumnType(
    "strings",
    lambda kind: (
        pa.types.is_string(kind) or pa.types.is_large_string(kind) or pa.types.is_null(kind)
    ),
)
_INTEGER = _ColumnType("integers", lambda kind: pa.types.is_integer(kind) or pa.types.is_null(kind))


class ExpectationConfig(BaseModel):
    """The expect stage of an experiment: which suite, and what a failing batch does.

    Frozen, so a runner's suite cannot change under it; `suite_dict` is what lineage hashes.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    kind: Literal["numbers"] = Field(
        "numbers", description="the dataset kind, which picks the suite"
    )
    policy: Literal["quarantine", "abort"] = Field(
        "quarantine",
        description="quarantine failing rows, or abort the run on any failing expectation",
    )
    max_chars: int = Field(200, ge=1, description="longest completion allowed, in characters")
    max_tokens: int | None = Field(
        None, ge=1, description="when set, completion_tokens must be in 1..max_tokens"
    )
    require_stop: bool = Field(
        True, description='finish_reason must be "stop": a "length" finish is a truncated list'
    )

    @property
    def suite_name(self) -> str:
        return f"germline.{self.kind}"

    def _rules(self) -> list[_Rule]:
        """The suite's expectations in order; the order decides a row's reason."""
        return _KINDS[self.kind].rules(self)

    def suite_dict(self) -> dict[str, Any]:
        """The suite as JSON-able data: its name and each expectation's type and kwargs, in
        order. It depends on the settings only (not the policy, not the GX version), so equal
        suites hash equal across runs and machines."""
        return {
            "name": self.suite_name,
            "expectations": [{"type": r.type, "kwargs": r.kwargs} for r in self._rules()],
        }

    def suite_hash(self) -> str:
        """SHA-256 of the canonical JSON of `suite_dict`."""
        text = json.dumps(self.suite_dict(), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(text.encode()).hexdigest()


def _numbers_rules(config: ExpectationConfig) -> list[_Rule]:
    """Identity first, then whether the teacher finished, then the text. A truncated
    completion is usually malformed too, and the truncation is the better reason."""
    rules = [
        _Rule("not_null", _NOT_NULL, {"column": "prompt_id"}),
        _Rule("unique", _UNIQUE, {"column": "prompt_id"}),
        _Rule("not_null", _NOT_NULL, {"column": "completion"}),
    ]
    if config.require_stop:
        rules += [
            _Rule("not_null", _NOT_NULL, {"column": "finish_reason"}),
            _Rule(
                "in_set",
                "expect_column_values_to_be_in_set",
                {"column": "finish_reason", "value_set": ["stop"]},
            ),
        ]
    if config.max_tokens is not None:
        rules += [
            _Rule("not_null", _NOT_NULL, {"column": "completion_tokens"}),
            _Rule(
                "between",
                "expect_column_values_to_be_between",
                {"column": "completion_tokens", "min_value": 1, "max_value": config.max_tokens},
            ),
        ]
    rules += [
        _Rule(
            "length",
            "expect_column_value_lengths_to_be_between",
            {"column": "completion", "min_value": 1, "max_value": config.max_chars},
        ),
        _Rule(
            "match_regex",
            "expect_column_values_to_match_regex",
            {"column": "completion", "regex": NUMBER_LIST_REGEX},
        ),
    ]
    return rules


class _Kind(NamedTuple):
    """A dataset kind: the columns its suite may read, and the suite."""

    columns: dict[str, _ColumnType]
    rules: Callable[[ExpectationConfig], list[_Rule]]


# One entry per value of ExpectationConfig.kind; code and maths kinds join here.
_KINDS: dict[str, _Kind] = {
    "numbers": _Kind(
        columns={
            "prompt_id": _ANY,
            "completion": _TEXT,
            "finish_reason": _TEXT,
            "completion_tokens": _INTEGER,
        },
        rules=_numbers_rules,
    ),
}


class ExpectationFailed(RunAborted):
    """A batch failed its suite under policy "abort": the run stops (exit 1), what it
    committed before stays. `summary` is the batch summary."""

    def __init__(self, summary: dict[str, Any]) -> None:
        failed = "; ".join(
            f"{e['type']}({e['column']}): {e['unexpected_count']} unexpected"
            for e in summary["expectations"]
            if not e["success"]
        )
        super().__init__(
            f"expectations failed: suite {summary['suite']} failed on {summary['rejected']} of "
            f"{summary['rows']} rows: {failed}"
        )
        self.summary = summary

    def __reduce__(self) -> tuple[type[ExpectationFailed], tuple[dict[str, Any]]]:
        # Rebuilt from the summary, not the message: Ray ships a stage's exception to the
        # driver by pickling it, and the default rebuild would pass the message as `summary`.
        return type(self), (self.summary,)


class ExpectResult(NamedTuple):
    """What the expect stage makes of a batch."""

    accepted: pa.Table
    rejected: pa.Table  # every input column, plus `reason` and `filter`
    summary: dict[str, Any]  # JSON-able; goes into the Delta commit metadata


class _Outcome(NamedTuple):
    """One expectation's result on one batch."""

    success: bool
    unexpected_count: int
    rows: list[int]  # positions of the rows it rejects, ascending (duplicates: later copies)


class ExpectationRunner:
    """Validates batches against one suite. Build it once per worker: the GX context, data
    source, batch definition and suite are made here, and each `validate` is one GX run. One
    thread at a time: give each worker (a Ray actor, say) its own runner."""

    def __init__(self, config: ExpectationConfig) -> None:
        import great_expectations as gx
        from great_expectations.data_context.types.base import (
            DataContextConfig,
            InMemoryStoreBackendDefaults,
            ProgressBarsConfig,
        )
        from great_expectations.expectations.expectation_configuration import (
            ExpectationConfiguration,
        )
        from great_expectations.validator.v1_validator import Validator

        logging.getLogger("great_expectations").setLevel(logging.ERROR)
        self.config = config
        kind = _KINDS[config.kind]
        self._rules = config._rules()
        self._reasons = [f"expectation: {r.label}" for r in self._rules]
        self._filters = [f"expect:{r.name}" for r in self._rules]
        # The columns the suite reads, in suite order: the only ones converted to pandas.
        self._columns = {r.column: kind.columns[r.column] for r in self._rules}
        project = DataContextConfig(
            analytics_enabled=False,
            progress_bars=ProgressBarsConfig(globally=False, metric_calculations=False),
            # No temporary data-docs folder: nothing is rendered.
            store_backend_defaults=InMemoryStoreBackendDefaults(init_temp_docs_sites=False),
        )
        context = gx.get_context(mode="ephemeral", project_config=project)
        source = context.data_sources.add_pandas("germline")
        asset = source.add_dataframe_asset(config.kind)
        self._batch_definition = asset.add_batch_definition_whole_dataframe("batch")
        _skip_fingerprint(source.get_execution_engine())
        suite = gx.ExpectationSuite(
            name=config.suite_name,
            expectations=[
                ExpectationConfiguration(type=r.type, kwargs=r.kwargs).to_domain_obj()
                for r in config._rules()  # fresh kwargs: GX adds its own keys to them
            ],
        )
        self._suite = context.suites.add(suite)
        self._position = {e.id: i for i, e in enumerate(self._suite.expectations)}
        self._validator = Validator
        self._summary_head = {
            "suite": config.suite_name,
            "suite_hash": config.suite_hash(),
            "kind": config.kind,
            "policy": config.policy,
            "great_expectations": gx.__version__,
        }

    def validate(self, table: pa.Table) -> ExpectResult:
        """Split `table` into accepted rows and quarantined rows with `reason` and `filter`,
        both in input order. Under policy "abort", raise ExpectationFailed instead when any
        expectation fails."""
        self._check(table)
        outcomes = self._run(table) if table.num_rows else self._vacuous()
        # Suite order decides: a row keeps the first expectation that flagged it.
        first: dict[int, int] = {}
        for position, outcome in enumerate(outcomes):
            for row in outcome.rows:
                first.setdefault(row, position)
        rows = sorted(first)
        keep = np.ones(table.num_rows, dtype=bool)
        keep[rows] = False
        rejected = table.filter(pa.array(~keep))
        reasons = [self._reasons[first[row]] for row in rows]
        filters = [self._filters[first[row]] for row in rows]
        rejected = rejected.append_column("reason", pa.array(reasons, pa.string()))
        rejected = rejected.append_column("filter", pa.array(filters, pa.string()))
        summary = self._summary(outcomes, Counter(first.values()), table.num_rows, len(rows))
        if self.config.policy == "abort" and not summary["success"]:
            raise ExpectationFailed(summary)
        return ExpectResult(table.filter(pa.array(keep)), rejected, summary)

    def _check(self, table: pa.Table) -> None:
        taken = {"reason", "filter"} & set(table.column_names)
        if taken:
            raise ValueError(f"the table already has column(s) {sorted(taken)}; rename them")
        missing = [c for c in self._columns if c not in table.column_names]
        if missing:
            raise ValueError(
                f"the {self.config.kind} suite needs column(s) {missing}; "
                f"the table has {table.column_names}"
            )
        for column, wanted in self._columns.items():
            kind = table.schema.field(column).type
            if not wanted.accepts(kind):
                raise ValueError(f"column {column!r} must hold {wanted.description}, not {kind}")

    def _run(self, table: pa.Table) -> list[_Outcome]:
        """One GX run over the columns the suite reads; the outcomes in suite order."""
        frame = pa.table(
            [_widened(table.column(name)) for name in self._columns], names=list(self._columns)
        ).to_pandas()
        validator = self._validator(
            batch_definition=self._batch_definition,
            batch_parameters={"dataframe": frame},
            result_format=_RESULT_FORMAT,
        )
        result: ExpectationSuiteValidationResult = validator.validate_expectation_suite(self._suite)
        outcomes: list[_Outcome | None] = [None] * len(self._rules)
        for checked in result.results:
            position = self._position[checked.expectation_config.id]
            rule = self._rules[position]
            error = _exception_message(checked.exception_info)
            if error is not None:
                raise RuntimeError(f"{rule.label} could not be evaluated: {error}")
            count = int(checked.result.get("unexpected_count") or 0)
            index = checked.result.get("unexpected_index_list")
            if count and index is None:
                raise RuntimeError(f"{rule.label} failed {count} rows without naming them")
            rows = sorted(int(i) for i in index or ())
            if rule.type == _UNIQUE:
                rows = _later_copies(table.column(rule.column), rows)
            outcomes[position] = _Outcome(bool(checked.success), count, rows)
        lost = [self._rules[i].label for i, o in enumerate(outcomes) if o is None]
        if lost:
            raise RuntimeError(f"GX returned no result for {lost}")
        return outcomes  # type: ignore[return-value]  # no None left, checked above

    def _vacuous(self) -> list[_Outcome]:
        """An empty batch, without GX: every map expectation passes vacuously on no rows,
        which is what GX itself answers, a GX run (about 60 ms) later."""
        return [_Outcome(True, 0, []) for _ in self._rules]

    def _summary(
        self, outcomes: list[_Outcome], quarantined: Counter[int], rows: int, rejected: int
    ) -> dict[str, Any]:
        successful = sum(o.success for o in outcomes)
        return {
            **self._summary_head,
            "success": successful == len(outcomes),
            "evaluated": len(outcomes),
            "successful": successful,
            "unsuccessful": len(outcomes) - successful,
            "expectations": [
                {
                    "type": rule.type,
                    "column": rule.column,
                    "success": outcome.success,
                    "unexpected_count": outcome.unexpected_count,
                    "quarantined": quarantined[position],
                }
                for position, (rule, outcome) in enumerate(zip(self._rules, outcomes, strict=True))
            ],
            "rows": rows,
            "accepted": rows - rejected,
            "rejected": rejected,
        }


def _widened(column: pa.ChunkedArray) -> pa.ChunkedArray:
    """Integers narrower than 64 bits as int64. GX compares a column of numpy int64 or float64
    with vectorised operators but any other dtype one value at a time in Python, and pandas
    turns an int32 column without nulls into numpy int32 (with nulls, float64 either way)."""
    kind = column.type
    if pa.types.is_integer(kind) and kind.bit_width < 64:
        return column.cast(pa.int64())
    return column


def _later_copies(column: pa.ChunkedArray, rows: list[int]) -> list[int]:
    """Of the rows GX flagged as duplicates (every copy), those after each value's first."""
    if not rows:
        return rows
    seen: set[Any] = set()
    later = []
    for row, value in zip(rows, column.take(pa.array(rows)).to_pylist(), strict=True):
        if value in seen:
            later.append(row)
        else:
            seen.add(value)
    return later


def _skip_fingerprint(engine: Any) -> None:
    """Let `engine` (this runner's own) load a DataFrame batch without fingerprinting it.

    GX's `get_batch_data_and_markers` hashes every row of a batch under 1 GB into a
    "pandas_data_fingerprint" batch marker that nothing reads: 5 ms of a 10,000-row validation,
    60 ms of a 100,000-row one. For the one kind of batch this runner makes (a whole DataFrame,
    no partitioner, no sampler) this does what GX does otherwise; anything else goes to GX.
    """
    import pandas as pd
    from great_expectations.core.batch import BatchMarkers
    from great_expectations.core.batch_spec import RuntimeDataBatchSpec
    from great_expectations.execution_engine.pandas_batch_data import PandasBatchData

    load = engine.get_batch_data_and_markers

    def get_batch_data_and_markers(batch_spec: Any) -> tuple[Any, Any]:
        plain = (
            isinstance(batch_spec, RuntimeDataBatchSpec)
            and isinstance(batch_spec.batch_data, pd.DataFrame)
            and not batch_spec.get("partitioner_method")
            and not batch_spec.get("sampling_method")
        )
        if not plain:
            return load(batch_spec)
        frame = batch_spec.batch_data
        batch_spec.batch_data = "PandasDataFrame"  # as GX does: the spec goes into the result
        loaded = datetime.now(UTC).strftime("%Y%m%dT%H%M%S.%fZ")
        return PandasBatchData(engine, frame), BatchMarkers({"ge_load_time": loaded})

    engine.get_batch_data_and_markers = get_batch_data_and_markers


def _exception_message(info: dict[str, Any] | None) -> str | None:
    """The error GX caught while evaluating an expectation, if any. GX reports it flat
    ({"raised_exception": ...}) or per metric ({metric id: {"raised_exception": ...}})."""
    if not info:
        return None
    entries = [info] if "raised_exception" in info else list(info.values())
    for entry in entries:
        if isinstance(entry, dict) and str(entry.get("raised_exception")) == "True":
            return str(entry.get("exception_message"))
    return None
