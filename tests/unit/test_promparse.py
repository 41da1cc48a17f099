"""Prometheus text parsing: full parse, the selective fast path, and malformed input."""

from __future__ import annotations

import math
import time
from pathlib import Path

import pytest

from shared.engines import BUILTIN_ENGINES
from shared.promparse import PromParseError, Sample, SampleSelector, parse, parse_selected

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures" / "metrics"
ALL_FIXTURES = sorted(path.name for path in FIXTURES.glob("*.txt") if "malformed" not in path.name)


def fixture(name: str) -> str:
    return (FIXTURES / name).read_text(encoding="utf-8")


GOOD_LINES = [
    ("no labels", "foo 1", Sample("foo", {}, 1.0)),
    ("labels", 'foo{a="1",b="x y"} 2.5', Sample("foo", {"a": "1", "b": "x y"}, 2.5)),
    ("labels in any order", 'foo{b="2",a="1"} 3', Sample("foo", {"a": "1", "b": "2"}, 3.0)),
    ("colon name", 'vllm:num_requests_waiting{engine="0"} 12.0',
     Sample("vllm:num_requests_waiting", {"engine": "0"}, 12.0)),
    ("escaped quote", r'foo{q="say \"hi\""} 1', Sample("foo", {"q": 'say "hi"'}, 1.0)),
    ("escaped backslash", r'foo{p="C:\\dir\\"} 1', Sample("foo", {"p": "C:\\dir\\"}, 1.0)),
    ("escaped newline", r'foo{m="a\nb"} 1', Sample("foo", {"m": "a\nb"}, 1.0)),
    ("delimiters inside value", 'foo{a="x},y=\\"z\\"",b=""} 1',
     Sample("foo", {"a": 'x},y="z"', "b": ""}, 1.0)),
    ("utf-8 value", 'foo{model_name="模型/é"} 1', Sample("foo", {"model_name": "模型/é"}, 1.0)),
    ("trailing comma", 'foo{a="1",} 2', Sample("foo", {"a": "1"}, 2.0)),
    ("blanks in label set", 'foo{ a = "1" ,\tb="2" } 2', Sample("foo", {"a": "1", "b": "2"}, 2.0)),
    ("empty label set", "foo{} 2", Sample("foo", {}, 2.0)),
    ("scientific", "foo 1.7953536928099477e+09", Sample("foo", {}, 1.7953536928099477e09)),
    ("negative", "foo -3.5", Sample("foo", {}, -3.5)),
    ("+Inf", "foo +Inf", Sample("foo", {}, math.inf)),
    ("-Inf", "foo -Inf", Sample("foo", {}, -math.inf)),
    ("timestamp", "foo 1 1700000000000", Sample("foo", {}, 1.0, 1700000000000)),
    ("negative timestamp", 'foo{a="b"} 1 -5', Sample("foo", {"a": "b"}, 1.0, -5)),
    ("tabs and padding", "  foo\t 4  \t", Sample("foo", {}, 4.0)),
    ("no blank after brace", 'foo{a="1"}7', Sample("foo", {"a": "1"}, 7.0)),
    ("exemplar ignored", 'foo_bucket{le="1"} 3 # {trace_id="abc"} 0.5',
     Sample("foo_bucket", {"le": "1"}, 3.0)),
    ("le label +Inf", 'h_bucket{le="+Inf"} 9', Sample("h_bucket", {"le": "+Inf"}, 9.0)),
]


@pytest.mark.parametrize(("line", "expected"), [case[1:] for case in GOOD_LINES],
                         ids=[case[0] for case in GOOD_LINES])
def test_parse_one_line(line: str, expected: Sample) -> None:
    assert parse(line) == [expected]


def test_nan_value() -> None:
    (sample,) = parse('foo{a="1"} NaN')
    assert math.isnan(sample.value)


def test_comments_blank_lines_and_crlf_are_skipped() -> None:
    text = ("# HELP foo A help text with \\n escapes and \"quotes\".\r\n"
            "# TYPE foo gauge\r\n"
            "\r\n"
            "# just a comment\n"
            "   \n"
            "foo 1\r\n"
            "#EOF-ish free comment\n"
            "bar 2")  # no final newline
    assert parse(text) == [Sample("foo", {}, 1.0), Sample("bar", {}, 2.0)]


BAD_LINES = [
    ("missing value", "foo", "missing value"),
    ("missing value after labels", 'foo{a="1"}', "missing value"),
    ("unterminated label set", 'foo{a="1" 2', "after label 'a'"),
    ("unquoted label value", "foo{a=1} 2", "bad label name"),
    ("unterminated label value", 'foo{a="1} 2', "unterminated"),
    ("bad value", 'foo{a="1"} abc', "bad value"),
    ("underscore value", "foo 1_000", "bad value"),
    ("bad escape", r'foo{a="\q"} 1', "bad escape"),
    ("duplicate label", 'foo{a="1",a="2"} 1', "duplicate label 'a'"),
    ("text after timestamp", "foo 1 2 3", "unexpected text"),
    ("bad timestamp", "foo 1 1.5", "bad timestamp"),
    ("name starting with a digit", "1foo 2", "expected a metric name"),
    ("no name", '{a="1"} 1', "expected a metric name"),
    ("junk after name", "foo=3", "after the metric name"),
    ("bad TYPE", "# TYPE foo bogus", "# TYPE"),
    ("TYPE without name", "# TYPE", "needs a metric name"),
]


@pytest.mark.parametrize(("line", "message"), [case[1:] for case in BAD_LINES],
                         ids=[case[0] for case in BAD_LINES])
def test_malformed_line_names_its_number(line: str, message: str) -> None:
    text = f"# HELP foo ok\nok_metric 1\n{line}\nlater 2\n"
    with pytest.raises(PromParseError) as caught:
        parse(text)
    assert caught.value.line == 3
    assert str(caught.value).startswith("line 3: ")
    assert message in str(caught.value)


@pytest.mark.parametrize("name", ALL_FIXTURES)
def test_every_fixture_parses_fully(name: str) -> None:
    samples = parse(fixture(name))
    assert len(samples) > 50
    assert all(isinstance(sample.value, float) for sample in samples)


def test_real_vllm_payload_values() -> None:
    samples = parse(fixture("vllm-0.32.0-during-load.txt"))
    by_name = {(s.name, tuple(sorted(s.labels.items()))): s.value for s in samples}
    labels = (("engine", "0"), ("model_name", "tiny"))
    assert by_name[("vllm:num_requests_waiting", labels)] == 12.0
    assert by_name[("vllm:num_requests_running", labels)] == 8.0
    assert by_name[("vllm:kv_cache_usage_perc", labels)] == 0.00207544866316689
    info = next(s for s in samples if s.name == "vllm:cache_config_info")
    assert info.labels["num_gpu_blocks"] == "8192"
    assert info.labels["kv_cache_dtype_skip_layers"] == "[]"


def _vllm_names() -> frozenset[str]:
    spec = BUILTIN_ENGINES["vllm"]
    return frozenset([*spec.waiting_queue, *spec.running_req, *spec.cache_usage,
                      *spec.extra.values()])


SELECTED_NAMES = _vllm_names() | {
    "sglang:num_queue_reqs", "sglang:num_running_reqs", "sglang:token_usage",
    "sglang:time_to_first_token_seconds_sum", "vllm:time_to_first_token_seconds_bucket",
    "process_cpu_seconds_total", "python_info",
}


@pytest.mark.parametrize("name", ALL_FIXTURES)
def test_selected_equals_filtered_full_parse(name: str) -> None:
    text = fixture(name)
    expected: dict[str, list[tuple[dict[str, str], float]]] = {}
    for sample in parse(text):
        if sample.name in SELECTED_NAMES:
            expected.setdefault(sample.name, []).append((sample.labels, sample.value))
    assert parse_selected(text, SELECTED_NAMES) == expected
    assert expected  # the fixture does contain some wanted names


SELECT_CASES = [
    ("prefix is not a match", "foo_total 5\nfoo 1\n", {"foo"}, {"foo": [({}, 1.0)]}),
    ("longer name is not a match", "foo 1\n", {"foo_total"}, {}),
    ("suffix is not a match", "xfoo 1\n", {"foo"}, {}),
    ("name in comments and label values ignored",
     '# HELP foo help\n# TYPE foo gauge\nbar{x="\\nfoo 9"} 2\n', {"foo"}, {}),
    ("first and last line", 'foo{a="1"} 1\nmid 0\nfoo{a="2"} 2', {"foo"},
     {"foo": [({"a": "1"}, 1.0), ({"a": "2"}, 2.0)]}),
    ("leading blanks and CRLF", "  foo 3\r\n", {"foo"}, {"foo": [({}, 3.0)]}),
    ("no wanted names", "foo 1\n", set(), {}),
    ("unwanted malformed lines are not looked at", "junk{{{ line\nfoo 1\nbar zzz\n", {"foo"},
     {"foo": [({}, 1.0)]}),
]


@pytest.mark.parametrize(("text", "names", "expected"), [case[1:] for case in SELECT_CASES],
                         ids=[case[0] for case in SELECT_CASES])
def test_parse_selected_cases(text: str, names: set[str],
                              expected: dict[str, list[tuple[dict[str, str], float]]]) -> None:
    assert parse_selected(text, frozenset(names)) == expected


def test_wanted_malformed_line_fails_with_its_number() -> None:
    with pytest.raises(PromParseError) as caught:
        parse_selected(fixture("vllm-0.32.0-malformed.txt"), _vllm_names())
    assert caught.value.line == 60
    assert "vllm:num_requests_waiting" in str(caught.value)
    with pytest.raises(PromParseError) as caught:
        parse_selected("ok 1\nfoo\n", frozenset({"foo"}))
    assert caught.value.line == 2


def test_selector_is_reusable_and_ignores_empty_names() -> None:
    selector = SampleSelector(["vllm:num_requests_waiting", ""])
    assert selector.names == frozenset({"vllm:num_requests_waiting"})
    for text, value in (("vllm:num_requests_waiting 1\n", 1.0),
                        ("vllm:num_requests_waiting 4\n", 4.0)):
        assert selector.parse(text) == {"vllm:num_requests_waiting": [({}, value)]}


def test_selected_parse_is_much_cheaper_than_a_full_parse() -> None:
    # a guard against accidental per-line work, with a wide margin for slow machines
    text = fixture("vllm-0.32.0-during-load.txt")
    selector = SampleSelector(_vllm_names())
    rounds = 50
    started = time.perf_counter()
    for _ in range(rounds):
        selector.parse(text)
    selected = (time.perf_counter() - started) / rounds
    started = time.perf_counter()
    for _ in range(5):
        parse(text)
    full = (time.perf_counter() - started) / 5
    assert selected < full / 3
    assert selected < 0.005
