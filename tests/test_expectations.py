"""The expect stage against real great-expectations runs: no mocks. Runners are module-scoped
because building one (and importing GX) is the slow part; each validate is one GX run."""

from __future__ import annotations

import json
import pickle
import random
import re
import sys
from typing import Any, get_args

import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pytest
from conftest import parses
from pydantic import ValidationError

from germline.checks import (
    ExpectationConfig,
    ExpectationFailed,
    ExpectationRunner,
    ExpectResult,
)
from germline.checks.expectations import _KINDS, _SPACE, NUMBER_LIST_REGEX

MAX_TOKENS = 64
CLEAN = ["[1, 2, 3]", "4;5;6.", "7 8 9", "(10, 11)", "12", "  482, 17, 999 . \n"]


def batch(rows: list[dict[str, Any]] | None = None, n: int = len(CLEAN)) -> pa.Table:
    """A batch of clean rows p0..p{n-1}; `rows` replaces fields of the first rows."""
    data = [
        {
            "prompt_id": f"p{i}",
            "prompt": f"Continue the list {i}",
            "completion": CLEAN[i % len(CLEAN)],
            "completion_tokens": 12,
            "finish_reason": "stop",
        }
        for i in range(n)
    ]
    for i, changes in enumerate(rows or []):
        data[i].update(changes)
    schema = pa.schema(
        [
            ("prompt_id", pa.string()),
            ("prompt", pa.string()),
            ("completion", pa.string()),
            ("completion_tokens", pa.int32()),
            ("finish_reason", pa.string()),
        ]
    )
    return pa.Table.from_pylist(data, schema=schema)


def ids(table: pa.Table) -> list[str]:
    return table.column("prompt_id").to_pylist()


@pytest.fixture(scope="module")
def runner() -> ExpectationRunner:
    return ExpectationRunner(ExpectationConfig(max_tokens=MAX_TOKENS))


@pytest.fixture(scope="module")
def abort_runner() -> ExpectationRunner:
    return ExpectationRunner(ExpectationConfig(policy="abort"))


def test_clean_batch_is_all_accepted(runner: ExpectationRunner) -> None:
    table = batch()
    result = runner.validate(table)
    assert isinstance(result, ExpectResult)
    assert result.accepted.equals(table)
    assert result.rejected.num_rows == 0
    assert result.rejected.column_names == [*table.column_names, "reason", "filter"]
    summary = result.summary
    assert summary["success"] is True
    assert summary["suite"] == "germline.numbers"
    assert summary["evaluated"] == summary["successful"] == 9
    assert summary["unsuccessful"] == 0
    assert (summary["rows"], summary["accepted"], summary["rejected"]) == (6, 6, 0)
    assert all(e["success"] and e["unexpected_count"] == 0 for e in summary["expectations"])


REGEX = ("expect_column_values_to_match_regex(completion)", "match_regex")
LENGTH = ("expect_column_value_lengths_to_be_between(completion)", "length")
IN_SET = ("expect_column_values_to_be_in_set(finish_reason)", "in_set")
TOKENS = ("expect_column_values_to_be_between(completion_tokens)", "between")


def not_null(column: str) -> tuple[str, str]:
    return f"expect_column_values_to_not_be_null({column})", "not_null"


@pytest.mark.parametrize(
    ("changes", "expected"),
    [
        ({"completion": "1, 2; 3"}, REGEX),
        ({"completion": "Sure! 1, 2, 3"}, REGEX),
        ({"completion": "[1, 2, 3"}, REGEX),
        ({"completion": "1,,2"}, REGEX),
        ({"completion": ", ".join(["1"] * 101)}, LENGTH),
        ({"completion": ""}, LENGTH),
        ({"finish_reason": "length"}, IN_SET),
        ({"finish_reason": None}, not_null("finish_reason")),
        ({"completion": None}, not_null("completion")),
        ({"prompt_id": None}, not_null("prompt_id")),
        ({"completion_tokens": 0}, TOKENS),
        ({"completion_tokens": MAX_TOKENS + 1}, TOKENS),
        ({"completion_tokens": None}, not_null("completion_tokens")),
    ],
)
def test_bad_row_is_quarantined_with_its_expectation(
    runner: ExpectationRunner, changes: dict[str, Any], expected: tuple[str, str]
) -> None:
    expectation, name = expected
    # The bad row sits in the middle of a clean batch: exactly it must go.
    rows = [{}, {}, changes]
    table = batch(rows)
    result = runner.validate(table)
    assert result.rejected.num_rows == 1
    assert result.rejected.column("reason").to_pylist() == [f"expectation: {expectation}"]
    assert result.rejected.column("filter").to_pylist() == [f"expect:{name}"]
    assert result.rejected.drop_columns(["reason", "filter"]).equals(table.slice(2, 1))
    assert ids(result.accepted) == ["p0", "p1", "p3", "p4", "p5"]
    assert result.summary["success"] is False
    failed = [e for e in result.summary["expectations"] if not e["success"]]
    # The first failing expectation takes the row; a later one ("" is no list either) only
    # counts it.
    assert f"{failed[0]['type']}({failed[0]['column']})" == expectation
    assert [e["quarantined"] for e in failed] == [1] + [0] * (len(failed) - 1)


def test_duplicate_prompt_ids_keep_the_first_copy(runner: ExpectationRunner) -> None:
    table = batch([{}, {"prompt_id": "p0"}, {}, {"prompt_id": "p0"}, {"prompt_id": "p2"}])
    result = runner.validate(table)
    assert ids(result.accepted) == ["p0", "p2", "p5"]
    assert ids(result.rejected) == ["p0", "p0", "p2"]
    assert set(result.rejected.column("filter").to_pylist()) == {"expect:unique"}
    unique = result.summary["expectations"][1]
    assert unique["type"] == "expect_column_values_to_be_unique"
    # GX counts every copy of a duplicated id; only the later copies are quarantined.
    assert (unique["unexpected_count"], unique["quarantined"]) == (5, 3)


def test_first_failing_expectation_in_suite_order_decides(runner: ExpectationRunner) -> None:
    table = batch(
        [
            {"finish_reason": "length", "completion": "1, 2, 3,"},  # truncated, so malformed
            {"prompt_id": None, "completion": None},
            {"completion_tokens": 0, "completion": "x" * 300},
            {"completion": "x" * 300},
        ]
    )
    result = runner.validate(table)
    assert result.rejected.column("reason").to_pylist() == [
        "expectation: expect_column_values_to_be_in_set(finish_reason)",
        "expectation: expect_column_values_to_not_be_null(prompt_id)",
        "expectation: expect_column_values_to_be_between(completion_tokens)",
        "expectation: expect_column_value_lengths_to_be_between(completion)",
    ]
    # Each row is quarantined once, whatever else it failed.
    assert result.summary["rejected"] == 4
    by_type = {(e["type"], e["column"]): e for e in result.summary["expectations"]}
    regex = by_type["expect_column_values_to_match_regex", "completion"]
    assert (regex["unexpected_count"], regex["quarantined"]) == (3, 0)


def test_rows_add_up_and_keep_their_order(runner: ExpectationRunner) -> None:
    """A large mixed batch through real GX: every row is accepted or rejected, never both,
    order is kept, and the regex accepts exactly the texts the row filter parses."""
    rng = random.Random(7)
    alphabet = "0123456789, ;.[]()-\n x"
    texts = ["".join(rng.choice(alphabet) for _ in range(rng.randint(1, 12))) for _ in range(1500)]
    texts += [", ".join(str(rng.randint(0, 999)) for _ in range(rng.randint(1, 10)))] * 500
    table = batch([{"completion": text} for text in texts], n=len(texts))
    result = runner.validate(table)
    assert result.accepted.num_rows + result.rejected.num_rows == table.num_rows
    assert result.summary["accepted"] + result.summary["rejected"] == result.summary["rows"]
    accepted, rejected = ids(result.accepted), ids(result.rejected)
    assert sorted(accepted + rejected, key=lambda i: int(i[1:])) == ids(table)
    assert accepted == sorted(accepted, key=lambda i: int(i[1:]))
    assert rejected == sorted(rejected, key=lambda i: int(i[1:]))
    assert set(result.rejected.column("filter").to_pylist()) == {"expect:match_regex"}
    assert set(result.accepted.column("completion").to_pylist()) == {t for t in texts if parses(t)}
    assert result.rejected.num_rows > 100 and result.accepted.num_rows > 500


def test_regex_means_what_the_row_filter_means() -> None:
    rng = random.Random(11)
    alphabet = "0123456789,;. []()-\n\t\x0bab"
    samples = [
        "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 14))) for _ in range(20000)
    ]
    samples += [
        "1, 2, 3.",
        "[1 2]",
        "(1;2).",
        "1, 2\n",
        "1.",
        ".",
        "[1, 2).",
        "1 2\n3",
        "\u00a01 2",
    ]
    for text in samples:
        assert (re.search(NUMBER_LIST_REGEX, text) is not None) == parses(text), repr(text)


def test_extra_columns_and_types_are_carried_through(runner: ExpectationRunner) -> None:
    table = batch([{}, {"completion": "not numbers"}])
    table = table.append_column("teacher", pa.array(["owl"] * table.num_rows))
    table = table.append_column("score", pa.array([0.5] * table.num_rows, pa.float32()))
    table = table.append_column(
        "meta", pa.array([{"seed": i, "tags": ["a"]} for i in range(table.num_rows)])
    )
    result = runner.validate(table)
    assert result.accepted.schema == table.schema
    assert result.rejected.schema == table.schema.append(pa.field("reason", pa.string())).append(
        pa.field("filter", pa.string())
    )
    assert result.rejected.column("meta").to_pylist() == [{"seed": 1, "tags": ["a"]}]
    assert result.accepted.column("teacher").to_pylist() == ["owl"] * 5


def test_abort_policy_raises_with_the_failing_expectations(abort_runner: ExpectationRunner) -> None:
    table = batch([{"completion": "1, 2; 3"}, {"finish_reason": "length"}, {"completion": "x"}])
    with pytest.raises(ExpectationFailed) as failure:
        abort_runner.validate(table)
    message = str(failure.value)
    assert "failed on 3 of 6 rows" in message
    assert "expect_column_values_to_match_regex(completion): 2 unexpected" in message
    assert "expect_column_values_to_be_in_set(finish_reason): 1 unexpected" in message
    assert "lengths" not in message  # only the failing expectations are named
    assert failure.value.summary["policy"] == "abort"
    assert failure.value.summary["success"] is False
    # Ray ships a stage's exception to the driver by pickling it.
    copy = pickle.loads(pickle.dumps(failure.value))
    assert (str(copy), copy.summary) == (message, failure.value.summary)


def test_abort_policy_passes_clean_data(abort_runner: ExpectationRunner) -> None:
    table = batch()
    result = abort_runner.validate(table)
    assert result.accepted.equals(table)
    assert result.summary["success"] is True
    # Without max_tokens the suite does not read completion_tokens, nor need the column.
    assert "completion_tokens" not in {e["column"] for e in result.summary["expectations"]}
    assert abort_runner.validate(table.drop_columns(["completion_tokens"])).summary["success"]


def test_summary_is_json(runner: ExpectationRunner) -> None:
    result = runner.validate(batch([{"completion": None}, {"prompt_id": "p0"}]))
    summary = json.loads(json.dumps(result.summary))
    assert summary == result.summary
    assert summary["suite_hash"] == runner.config.suite_hash()
    assert summary["great_expectations"].startswith("1.")
    suite = runner.config.suite_dict()
    assert [(e["type"], e["column"]) for e in summary["expectations"]] == [
        (e["type"], e["kwargs"]["column"]) for e in suite["expectations"]
    ]
    assert set(summary["expectations"][0]) == {
        "type",
        "column",
        "success",
        "unexpected_count",
        "quarantined",
    }


def test_empty_table(runner: ExpectationRunner) -> None:
    table = batch(n=0)
    result = runner.validate(table)
    assert result.accepted.num_rows == result.rejected.num_rows == 0
    assert result.accepted.schema == table.schema
    assert result.rejected.column_names == [*table.column_names, "reason", "filter"]
    assert result.summary["success"] is True
    assert (result.summary["rows"], result.summary["rejected"]) == (0, 0)
    # Skipping GX on an empty batch must say what GX itself says about one.
    assert runner._run(table) == runner._vacuous()


def test_bad_tables_are_refused(runner: ExpectationRunner) -> None:
    with pytest.raises(ValueError, match="needs column"):
        runner.validate(batch().drop_columns(["finish_reason"]))
    with pytest.raises(ValueError, match="'completion' must hold strings"):
        runner.validate(batch().set_column(2, "completion", pa.array(range(6))))
    with pytest.raises(ValueError, match="already has column"):
        runner.validate(batch().append_column("reason", pa.array(["x"] * 6)))


def test_config_and_suite_dict() -> None:
    config = ExpectationConfig()
    assert (config.kind, config.policy, config.max_chars, config.max_tokens) == (
        "numbers",
        "quarantine",
        200,
        None,
    )
    with pytest.raises(ValidationError):
        ExpectationConfig(max_char=10)  # type: ignore[call-arg]
    with pytest.raises(ValidationError):
        ExpectationConfig(policy="drop")  # type: ignore[arg-type]
    with pytest.raises(ValidationError):
        ExpectationConfig(max_tokens=0)
    with pytest.raises(ValidationError):
        config.max_chars = 5  # type: ignore[misc]
    suite = config.suite_dict()
    assert json.loads(json.dumps(suite)) == suite
    assert suite == ExpectationConfig().suite_dict()
    assert config.suite_hash() == ExpectationConfig(policy="abort").suite_hash()
    assert config.suite_hash() != ExpectationConfig(max_chars=100).suite_hash()
    types = [e["type"] for e in suite["expectations"]]
    assert "expect_column_values_to_be_in_set" in types
    assert "expect_column_values_to_be_in_set" not in [
        e["type"] for e in ExpectationConfig(require_stop=False).suite_dict()["expectations"]
    ]
    kinds = get_args(ExpectationConfig.model_fields["kind"].annotation)
    assert set(kinds) == set(_KINDS)


def test_whitespace_class_is_pythons_whitespace() -> None:
    # Every code point but the surrogates, which a str from Arrow never holds.
    text = "".join(chr(c) for c in range(sys.maxunicode + 1) if not 0xD800 <= c <= 0xDFFF)
    spelled = set(re.findall(_SPACE, text))
    assert spelled == set(re.findall(r"\s", text)) == {c for c in text if c.isspace()}
    assert len(spelled) == 29


def test_regex_runs_on_pyarrow_and_means_what_the_row_filter_means() -> None:
    # What GX runs: pandas `str.contains` on a pandas 3 "str" column. Without a `\s` in the
    # pattern pandas hands it to pyarrow's RE2 rather than to Python's `re` row by row.
    assert r"\s" not in NUMBER_LIST_REGEX
    column = pd.Series(["1, 2"], dtype="str")
    needs_python = getattr(column.array, "_needs_python_regex", None)
    if needs_python is not None:  # a pandas internal: checked while it exists
        assert not needs_python(NUMBER_LIST_REGEX)
    rng = random.Random(13)
    alphabet = "0123456789,;. []()-\n\t\x0b\x0c\r\x1c\x1f\x85\xa0\u2028\u3000\u200b\ufeffa"
    samples = [
        "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 14))) for _ in range(20000)
    ]
    samples += ["\u00a01 2", "1\u20282", "[1;\u30002]\u3000.", "1\u200b2", "1 2\n", "1\n"]
    matched = pd.Series(samples, dtype="str").str.contains(NUMBER_LIST_REGEX).tolist()
    assert matched == [parses(text) for text in samples]
    # pyarrow's own kernel, which pandas calls with Python's \Z spelled \z.
    kernel = pc.match_substring_regex(pa.array(samples), NUMBER_LIST_REGEX.replace(r"\Z", r"\z"))
    assert kernel.to_pylist() == matched


def test_batches_are_not_fingerprinted(
    runner: ExpectationRunner, monkeypatch: pytest.MonkeyPatch
) -> None:
    # GX hashes every row of a batch into a marker nobody reads; the runner skips it.
    import great_expectations.execution_engine.pandas_execution_engine as engine

    def refuse(frame: pd.DataFrame) -> str:
        raise AssertionError("the batch was fingerprinted")

    monkeypatch.setattr(engine, "hash_pandas_dataframe", refuse)
    result = runner.validate(batch([{"completion": "x"}]))
    assert result.rejected.column("filter").to_pylist() == ["expect:match_regex"]


@pytest.mark.parametrize(
    "kind", [pa.int8(), pa.int16(), pa.int32(), pa.int64(), pa.uint8(), pa.uint32(), pa.uint64()]
)
def test_token_counts_of_any_integer_type(runner: ExpectationRunner, kind: pa.DataType) -> None:
    # Narrow integers are widened to int64 for GX's vectorised comparison; the verdicts are the
    # same as for any other integer type, with or without nulls.
    tokens = [12, 0, MAX_TOKENS, MAX_TOKENS + 1, None, 1]
    table = batch()
    table = table.set_column(3, pa.field("completion_tokens", kind), pa.array(tokens, kind))
    result = runner.validate(table)
    assert result.rejected.column("reason").to_pylist() == [
        "expectation: expect_column_values_to_be_between(completion_tokens)",
        "expectation: expect_column_values_to_be_between(completion_tokens)",
        "expectation: expect_column_values_to_not_be_null(completion_tokens)",
    ]
    assert ids(result.accepted) == ["p0", "p2", "p5"]
    without_nulls = table.set_column(3, "completion_tokens", pa.array([1, 2, 3, 4, 5, 6], kind))
    assert runner.validate(without_nulls).rejected.num_rows == 0
