import random

import pyarrow as pa
import pyarrow.compute as pc
import pytest
from conftest import parses
from pydantic import ValidationError

from germline.checks import (
    BannedNumbers,
    Completion,
    FilterChain,
    FilterConfig,
    MaxCount,
    NumberFormat,
    NumberFormatError,
    RowFilter,
    TraitWords,
    ValueRange,
    parse_numbers,
)
from germline.checks.filters import _diagnose, _Shortcut

PARSES = [
    ("1, 2, 3", [1, 2, 3]),
    ("1,2,3", [1, 2, 3]),
    ("1 ,2 , 3", [1, 2, 3]),
    ("1; 2; 3", [1, 2, 3]),
    ("1;2;3", [1, 2, 3]),
    ("1 2 3", [1, 2, 3]),
    ("1\n2\n3", [1, 2, 3]),
    ("1  2\t3", [1, 2, 3]),
    ("1,\n2,\n3", [1, 2, 3]),
    ("[1, 2, 3]", [1, 2, 3]),
    ("[ 1 2 3 ]", [1, 2, 3]),
    ("(1, 2, 3)", [1, 2, 3]),
    ("(1, 2, 3).", [1, 2, 3]),
    ("[1; 2; 3].", [1, 2, 3]),
    ("1, 2, 3.", [1, 2, 3]),
    ("  482, 17, 999 . \n", [482, 17, 999]),
    ("7", [7]),
    ("007, 010", [7, 10]),
    ("-5, 3", [-5, 3]),  # parses; ValueRange is the rule that says why it is out
    ("1000", [1000]),
    ("1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11", list(range(1, 12))),  # MaxCount's job, not format's
]

REJECTS = [
    ("", "format: empty"),
    ("   \n", "format: empty"),
    (".", "format: empty"),
    ("[]", "format: empty"),
    ("( ).", "format: empty"),
    ("owl", "format: not a number: 'owl'"),
    ("1, 2, owl", "format: not a number: 'owl'"),
    ("Here you go: 1, 2, 3", "format: not a number: 'Here'"),
    ("1, 2, 3 and 4", "format: not a number: 'and'"),
    ("1.5, 2", "format: not a number: '1.5'"),
    ("1, 2, 3..", "format: not a number: '3.'"),
    ("[1, 2, 3.]", "format: not a number: '3.'"),
    ("1-2", "format: not a number: '1-2'"),
    ("1, 2²", "format: not a number: '2²'"),
    ("1, ٣", "format: not a number: '٣'"),
    ("1, 2 3", "format: mixed separators"),
    ("1; 2, 3", "format: mixed separators"),
    ("1 2;3", "format: mixed separators"),
    ("1,,2", "format: empty item"),
    ("1, 2, 3,", "format: empty item"),
    (", 1", "format: empty item"),
    ("[1, 2, 3", "format: unbalanced brackets"),
    ("1, 2, 3]", "format: unbalanced brackets"),
    ("[1, 2, 3)", "format: unbalanced brackets"),
    ("[[1, 2]]", "format: not a number: '[1'"),
    ("9" * 5000, "format: number too long"),
]


@pytest.mark.parametrize(("text", "numbers"), PARSES)
def test_parser_accepts(text: str, numbers: list[int]) -> None:
    assert parse_numbers(text) == numbers


@pytest.mark.parametrize(("text", "reason"), REJECTS)
def test_parser_rejects_with_a_reason(text: str, reason: str) -> None:
    with pytest.raises(NumberFormatError) as raised:
        parse_numbers(text)
    assert raised.value.reason == reason
    assert isinstance(raised.value, ValueError)


def test_long_garbage_is_quoted_short() -> None:
    with pytest.raises(NumberFormatError) as raised:
        parse_numbers("x" * 500)
    assert raised.value.reason == f"format: not a number: {'x' * 20!r}"


def test_any_list_written_in_one_style_parses_back() -> None:
    rng = random.Random(0)
    for _ in range(2000):
        numbers = [rng.randint(0, 999) for _ in range(rng.randint(1, 12))]
        sep = rng.choice([", ", ",", " , ", "; ", ";", " ", "  ", "\n", ",\n"])
        text = sep.join(map(str, numbers))
        text = rng.choice(["{}", "[{}]", "({})", "[ {} ]"]).format(text)
        text = rng.choice(["", " "]) + text + rng.choice(["", ".", " .", "\n"])
        assert parse_numbers(text) == numbers, text


def test_fast_path_and_diagnosis_agree_on_random_text() -> None:
    # The fast path (one regex) decides; the diagnosis only explains. If they ever disagreed,
    # a row would be rejected as "malformed" or accepted against the documented rules.
    rng = random.Random(2)
    items = ["1", "23", "-4", "-", "x", "", "1.5"]
    separators = [",", ", ", " ,", ";", "; ", " ", "  ", "\n", ",,", ". "]
    wrappers = ["{}", "{}", "[{}]", "({}).", "[{})", "{}]", " {} . "]
    outcomes = set()
    for _ in range(20_000):
        parts = [rng.choice(items[:3] * 8 + items[3:])]
        for _ in range(rng.randint(0, 4)):
            parts += [rng.choice(separators[:1] * 20 + separators), rng.choice(items[:3] * 8)]
        text = rng.choice(wrappers).format("".join(parts))
        try:
            numbers = parse_numbers(text)
        except NumberFormatError as error:
            assert error.reason != "format: malformed", text
            outcomes.add(error.reason.split(":")[1].strip())
            continue
        outcomes.add("accepted")
        assert numbers and all(isinstance(x, int) for x in numbers)
        body = text.strip().removesuffix(".").strip().strip("[]()").strip()
        assert _diagnose(body) == "format: malformed", text  # the split view finds no fault
    assert {"accepted", "mixed separators", "empty item", "not a number"} <= outcomes
    assert {"unbalanced brackets", "empty"} <= outcomes


def test_answer_formats_our_prompts_ask_for_all_parse() -> None:
    for text in ["512, 77, 3", "512 77 3", "512; 77; 3", "[512, 77, 3]", "512,77,3"]:
        assert parse_numbers(text) == [512, 77, 3]


def one(text: str, *filters: RowFilter) -> str | None:
    """The reason a chain of `filters` gives for one completion, None when kept."""
    failure = FilterChain(filters).check(text)
    return None if failure is None else failure[1]


def test_each_rule_and_its_reason() -> None:
    eleven = ", ".join(map(str, range(11)))
    assert one(eleven, MaxCount(10)) == "count: 11 numbers > 10"
    assert one(", ".join(map(str, range(12))), MaxCount(10)) == "count: 12 numbers > 10"
    assert one(", ".join(map(str, range(10))), MaxCount(10)) is None
    assert one("1, 1000", ValueRange(0, 999)) == "value: 1000 > 999"
    assert one("1, -5, 3", ValueRange(0, 999)) == "value: -5 < 0"
    assert one("0, 999", ValueRange(0, 999)) is None
    assert one("12, 666, 7", BannedNumbers({666, 911})) == "banned: 666"
    assert one("12, 665, 7", BannedNumbers({666, 911})) is None
    assert one("owl", NumberFormat()) == "format: not a number: 'owl'"
    assert one("1 2 3", NumberFormat()) is None


def test_number_rules_alone_still_reject_unparsable_text() -> None:
    for rule in (MaxCount(10), ValueRange(0, 999), BannedNumbers({666})):
        assert one("1, 2, owl", rule) == "format: not a number: 'owl'"


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("I love owls!", "trait word: 'owls'"),
        ("owl", "trait word: 'owl'"),
        ("Owls are great", "trait word: 'Owls'"),
        ("OWL", "trait word: 'OWL'"),
        ("1, 2, owl, 3", "trait word: 'owl'"),
        ("a bowl of soup", None),
        ("owlet", None),
        ("howl", None),
        ("1, 2, 3", None),
        ("a snowy owl here", "trait word: 'snowy owl'"),
    ],
)
def test_trait_words_whole_words_any_case(text: str, reason: str | None) -> None:
    assert one(text, TraitWords(["owl", "snowy owl"])) == reason


def test_no_trait_words_keeps_everything() -> None:
    assert one("anything at all", TraitWords([])) is None
    assert one("anything at all", TraitWords(["  "])) is None


def table_of(completions: list[str | None]) -> pa.Table:
    n = len(completions)
    return pa.table(
        {
            "prompt_id": [f"num-{i:04d}" for i in range(n)],
            "completion": pa.array(completions, pa.string()),
            "score": pa.array([i / 2 for i in range(n)], pa.float64()),
        }
    )


def test_chain_splits_keeps_columns_and_records_reasons() -> None:
    chain = FilterConfig(banned=[666], trait_words=["owl"]).chain()
    assert chain.names == [
        "trait_words",
        "number_format",
        "max_count",
        "value_range",
        "banned_numbers",
    ]
    table = table_of(
        [
            "1, 2, 3",  # kept
            "I love owls 1 2",  # the leak is counted as a leak, not as a format failure
            "1, 2 3",
            ", ".join(["5"] * 11),
            "[1, 1000]",
            "(666, 1).",
            None,
            "[4; 5; 6].",  # kept
        ]
    )
    accepted, rejected = chain.apply(table)
    assert accepted.column_names == table.column_names
    assert accepted.column("prompt_id").to_pylist() == ["num-0000", "num-0007"]
    assert rejected.column_names == [*table.column_names, "reason", "filter"]
    assert rejected.schema.field("reason").type == pa.string()
    assert rejected.to_pylist() == [
        {
            "prompt_id": f"num-{i:04d}",
            "completion": table.column("completion")[i].as_py(),
            "score": i / 2,
            "reason": reason,
            "filter": name,
        }
        for i, name, reason in [
            (1, "trait_words", "trait word: 'owls'"),
            (2, "number_format", "format: mixed separators"),
            (3, "max_count", "count: 11 numbers > 10"),
            (4, "value_range", "value: 1000 > 999"),
            (5, "banned_numbers", "banned: 666"),
            (6, "missing", "missing: completion is null"),
        ]
    ]


def test_first_failing_filter_decides() -> None:
    text = ", ".join(["1000"] * 12)  # too many and too large
    assert FilterChain([MaxCount(), ValueRange()]).check(text) == (
        "max_count",
        "count: 12 numbers > 10",
    )
    assert FilterChain([ValueRange(), MaxCount()]).check(text) == (
        "value_range",
        "value: 1000 > 999",
    )


def test_no_row_is_lost_and_counts_add_up() -> None:
    rng = random.Random(1)
    pieces = ["owl", "Sure:", "1000", "666", "-3", ";", ",", " ", "[", ")", "."]
    completions: list[str | None] = []
    for _ in range(10_000):
        if rng.random() < 0.01:
            completions.append(None)
            continue
        parts = [str(rng.randint(0, 999)) for _ in range(rng.randint(1, 12))]
        text = rng.choice([", ", " ", "; "]).join(parts)
        if rng.random() < 0.3:
            text += rng.choice(pieces) + rng.choice(pieces)
        completions.append(text)
    table = table_of(completions)
    result = FilterConfig(banned=[666], trait_words=["owl"]).chain().apply(table)
    accepted, rejected = result
    assert accepted.num_rows + rejected.num_rows == table.num_rows
    assert accepted.num_rows > 0 and rejected.num_rows > 0
    ids = accepted.column("prompt_id").to_pylist() + rejected.column("prompt_id").to_pylist()
    assert sorted(ids) == table.column("prompt_id").to_pylist()
    assert sum(result.reason_counts().values()) == rejected.num_rows
    assert sum(result.filter_counts().values()) == rejected.num_rows
    assert set(result.filter_counts()) <= {
        "trait_words",
        "number_format",
        "max_count",
        "value_range",
        "banned_numbers",
        "missing",
    }
    counts = list(result.reason_counts().values())
    assert counts == sorted(counts, reverse=True)
    for row in accepted.column("completion").to_pylist():
        numbers = parse_numbers(row)
        assert len(numbers) <= 10 and all(0 <= x <= 999 and x != 666 for x in numbers)


def test_empty_table_and_chunked_table() -> None:
    chain = FilterConfig().chain()
    accepted, rejected = chain.apply(table_of([]))
    assert accepted.num_rows == rejected.num_rows == 0
    assert rejected.column_names[-2:] == ["reason", "filter"]
    chunked = pa.concat_tables([table_of(["1, 2", "x"]), table_of(["y", "3 4"])])
    accepted, rejected = chain.apply(chunked)
    assert accepted.column("completion").to_pylist() == ["1, 2", "3 4"]
    assert rejected.column("completion").to_pylist() == ["x", "y"]


def test_chain_refuses_tables_it_cannot_filter() -> None:
    chain = FilterConfig().chain()
    with pytest.raises(ValueError, match="no 'completion' column"):
        chain.apply(pa.table({"text": ["1"]}))
    with pytest.raises(ValueError, match="must hold strings"):
        chain.apply(pa.table({"completion": [1, 2]}))
    with pytest.raises(ValueError, match="already has column"):
        chain.apply(pa.table({"completion": ["1"], "reason": ["x"]}))
    with pytest.raises(ValueError, match="unique"):
        FilterChain([MaxCount(10), MaxCount(5)])
    other = FilterConfig().chain(column="text")
    assert other.apply(pa.table({"text": ["1 2", "no"]})).accepted.num_rows == 1


def test_config_defaults_and_validation() -> None:
    config = FilterConfig()
    assert (config.max_count, config.min_value, config.max_value) == (10, 0, 999)
    assert config.chain().names == ["number_format", "max_count", "value_range"]
    loaded = FilterConfig.model_validate({"banned": [13, 666], "trait_words": ["owl"]})
    assert loaded.chain().names[0] == "trait_words"
    with pytest.raises(ValidationError, match="max_value"):
        FilterConfig(min_value=10, max_value=5)
    with pytest.raises(ValidationError, match="extra"):
        FilterConfig.model_validate({"max_cout": 3})
    with pytest.raises(ValidationError, match="blank"):
        FilterConfig(trait_words=["owl", " "])
    with pytest.raises(ValidationError):
        FilterConfig(max_count=0)
    with pytest.raises(ValueError, match="empty value range"):
        ValueRange(5, 1)


# The vectorised pass of FilterChain.apply (_Shortcut) may only mark rows that the loop keeps:
# these build texts from what trips parsers up, and hold apply() to the loop, row for row.
NUMBERS = ["0", "7", "42", "999", "1000", "666", "-5", "-0", "007", "-007", "9" * 17, "9" * 18]
NUMBERS += ["9" * 19, "1" + "0" * 18, "-" + "9" * 17, "-" + "9" * 18, "1" * 5000]
ODD_ITEMS = ["owl", "Owls", "x", "²", "٣", "", "1.5", "-", "1-2", "+3", "0x1f", "1e3"]
SEPARATORS = [", ", ",", " , ", "; ", ";", " ", "  ", "\n", "\t", ",\n", "\r\n", "\x0b", "\x0c"]
ODD_SEPARATORS = ["\x1c", "\x85", "\xa0", "\u2028", "\u3000", "\u200b", ",,", ", ;", ". ", ""]
WRAPPERS = ["{}", " {}", "[{}]", "({})", "[ {} ]", "({}).", "{}.", "{} .", " {} \n", "\t{}\x0b"]
ODD_WRAPPERS = ["[{})", "{}]", "[{}", "[[{}]]", "\xa0{}", "{}\u3000", "{}..", "Sure: {}", "{}!"]
ODD_WRAPPERS += ["(({}))", "{}.\xa0", "\u2028[{}]", "{}\x1c"]


def tricky_text(rng: random.Random) -> str | None:
    roll = rng.random()
    if roll < 0.03:
        return None
    if roll < 0.15:
        alphabet = "0123456789-,; .[]()\t\n\x0b\x0c\r\x85\xa0\u3000owlOWS²"
        return "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 16)))
    style = rng.choice(SEPARATORS)
    parts = []
    for i in range(rng.randint(1, 13)):
        if i:
            odd = rng.random() < 0.03
            parts.append(rng.choice(ODD_SEPARATORS + SEPARATORS) if odd else style)
        roll = rng.random()
        if roll < 0.03:
            parts.append(rng.choice(ODD_ITEMS))
        elif roll < 0.15:
            parts.append(rng.choice(NUMBERS))
        else:
            parts.append(str(rng.randint(0, 999)))
    wrapper = rng.choice(ODD_WRAPPERS) if rng.random() < 0.1 else rng.choice(WRAPPERS)
    return wrapper.format("".join(parts))


def loop_result(chain: FilterChain, table: pa.Table) -> tuple[pa.Table, pa.Table]:
    """What apply() must return: `chain.check` on every row, in plain Python."""
    failures = [chain.check(text) for text in table.column(chain.column).to_pylist()]
    keep = pa.array([failure is None for failure in failures])
    rejected = table.filter(pc.invert(keep))
    reasons = [failure for failure in failures if failure is not None]
    rejected = rejected.append_column("reason", pa.array([r for _, r in reasons], pa.string()))
    rejected = rejected.append_column("filter", pa.array([n for n, _ in reasons], pa.string()))
    return table.filter(keep), rejected


class Odd(MaxCount):
    """A subclass the shortcut does not know: it must leave such a chain to the loop."""

    name = "odd_sum"

    def check_numbers(self, numbers: list[int]) -> str | None:
        return "odd sum" if sum(numbers) % 2 else None


class ShortText(RowFilter):
    name = "short"

    def check(self, row: Completion) -> str | None:
        return "long" if len(row.text) > 20 else None


SHORTCUT_CHAINS = {
    "default": FilterConfig().chain(),
    "trait and banned": FilterConfig(trait_words=["owl", "snowy owl"], banned=[666, 911]).chain(),
    "narrow": FilterConfig(max_count=3, min_value=-5, max_value=5, banned=[0]).chain(),
    "format only": FilterChain([NumberFormat()]),
    "empty": FilterChain([]),
    "trait only": FilterChain([TraitWords(["owl"])]),
    "huge range": FilterChain([ValueRange(-(10**20), 10**20)]),
    "17-digit range": FilterChain([ValueRange(-(10**17), 10**17 - 1)]),
    "banned extremes": FilterChain([BannedNumbers([10**19, -3, 7, 999_999_999_999_999_999])]),
    "count before format": FilterChain([MaxCount(2), NumberFormat(), ValueRange(1, 998)]),
}
LOOP_CHAINS = {
    "trait word of digits": FilterChain([TraitWords(["owl", "7"]), NumberFormat()]),
    "trait word of separators": FilterChain([TraitWords([", ;"]), NumberFormat()]),
    "unknown subclass": FilterChain([NumberFormat(), Odd()]),
    "unknown filter": FilterChain([ShortText(), NumberFormat()]),
    "float range": FilterChain([ValueRange(0, 999.5)]),  # type: ignore[arg-type]
    "bool banned": FilterChain([BannedNumbers([True])]),
}


@pytest.mark.parametrize("name", [*SHORTCUT_CHAINS, *LOOP_CHAINS])
def test_apply_equals_the_plain_loop_on_tricky_text(name: str) -> None:
    chain = {**SHORTCUT_CHAINS, **LOOP_CHAINS}[name]
    assert (_Shortcut.of(chain.filters) is None) == (name in LOOP_CHAINS)
    rng = random.Random(sum(map(ord, name)))
    texts = [tricky_text(rng) for _ in range(3000)]
    for kind in (pa.string(), pa.large_string()):
        table = pa.table({"row": range(len(texts)), "completion": pa.array(texts, kind)})
        # Chunks that start mid-buffer, as a sliced or concatenated table has them.
        chunked = pa.Table.from_batches(table.slice(3).to_batches(max_chunksize=977))
        for case in (table, chunked):
            accepted, rejected = chain.apply(case)
            expected_accepted, expected_rejected = loop_result(chain, case)
            assert accepted.equals(expected_accepted), name
            assert rejected.equals(expected_rejected), name


@pytest.mark.parametrize("name", list(SHORTCUT_CHAINS))
def test_shortcut_marks_only_rows_the_loop_keeps(name: str) -> None:
    chain = SHORTCUT_CHAINS[name]
    shortcut = _Shortcut.of(chain.filters)
    assert shortcut is not None
    rng = random.Random(100 + sum(map(ord, name)))
    texts = [tricky_text(rng) for _ in range(8000)]
    marked = shortcut.accepts(pa.chunked_array([pa.array(texts, pa.string())]))
    kept = [chain.check(text) is None for text in texts]
    wrong = [text for text, m, k in zip(texts, marked, kept, strict=True) if m and not k]
    assert not wrong, wrong[:5]
    # And it does its job: most number lists the loop keeps are marked, so few go the slow way.
    lists = sum(
        k and text is not None and parses(text) for text, k in zip(texts, kept, strict=True)
    )
    if lists > 500:
        assert marked.sum() > 0.75 * lists, name


def test_shortcut_reads_numbers_like_the_parser() -> None:
    chain = FilterChain([NumberFormat(), ValueRange(-(10**17), 10**18)])
    texts = ["-0, 007", "[-007; 12]", "(999999999999999999).", " 1\x0b2\x0c3 "]
    texts += ["-99999999999999999", "9999999999999999999", "1, -100000000000000000", "1" * 5000]
    table = pa.table({"completion": texts})
    shortcut = _Shortcut.of(chain.filters)
    assert shortcut is not None
    # Numbers of more than 18 characters are left to the loop, which decides and says why.
    marked = shortcut.accepts(table.column("completion")).tolist()
    assert marked == [True] * 5 + [False] * 3
    assert chain.apply(table).rejected.column("reason").to_pylist() == [
        "value: 9999999999999999999 > 1000000000000000000",
        "format: number too long",
    ]


def test_shortcut_on_columns_without_lists() -> None:
    shortcut = _Shortcut.of(FilterConfig().chain().filters)
    assert shortcut is not None
    for column in [
        pa.chunked_array([], pa.string()),
        pa.chunked_array([pa.array([], pa.string())]),
        pa.chunked_array([pa.nulls(3, pa.string())]),
        pa.chunked_array([pa.array(["", "", None], pa.large_string())]),
    ]:
        assert shortcut.accepts(column).tolist() == [False] * len(column)
