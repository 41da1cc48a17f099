"""Prometheus text exposition format → typed samples (pure: no I/O)."""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Any, NamedTuple

Labels = dict[str, str]
Series = list[tuple[Labels, float]]
"""The samples of one sample name: ``(labels, value)`` in text order."""

_NAME = re.compile(r"[a-zA-Z_:][a-zA-Z0-9_:]*")
_PAIR = r'[a-zA-Z_][a-zA-Z0-9_]*="[^"\\\n]*"'
# The common shape (no escapes, no blanks inside braces, no timestamp) in one match;
# anything else takes the careful character-by-character path.
_SIMPLE_LINE = re.compile(
    r"([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{((?:" + _PAIR + r"(?:," + _PAIR + r")*,?)?)\})?[ \t]+([^ \t]+)"
)
_SIMPLE_PAIR = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="([^"]*)"')
_LABEL_NAME = re.compile(r"([a-zA-Z_][a-zA-Z0-9_]*)[ \t]*=[ \t]*\"")
_TIMESTAMP = re.compile(r"-?[0-9]+")
_TYPES = frozenset(
    {"counter", "gauge", "histogram", "summary", "untyped",
     "unknown", "info", "stateset", "gaugehistogram"}  # the last four are OpenMetrics
)
_ESCAPES = {"\\": "\\", '"': '"', "n": "\n"}
_BLANKS = " \t"
_NAME_END = "{ \t\r\n"
_EXCERPT = 120


class Sample(NamedTuple):
    """One sample line: ``name{labels} value [timestamp]``."""

    name: str
    labels: Labels
    value: float
    timestamp_ms: int | None = None


class PromParseError(ValueError):
    """A line is not valid Prometheus text; ``line`` is its 1-based number."""

    def __init__(self, line: int, message: str, text: str = "") -> None:
        excerpt = text if len(text) <= _EXCERPT else text[:_EXCERPT] + "..."
        super().__init__(f"line {line}: {message}" + (f": {excerpt!r}" if text else ""))
        self.line = line
        self.message = message


class _LineError(Exception):
    """Raised inside a line; the caller adds the line number."""


def parse(text: str) -> list[Sample]:
    """Every sample of a payload; raise PromParseError on the first malformed line."""
    samples: list[Sample] = []
    for number, raw in enumerate(text.split("\n"), 1):
        line = raw.strip(" \t\r")
        if not line:
            continue
        try:
            if line[0] == "#":
                _check_comment(line)
            else:
                samples.append(_parse_sample(line))
        except _LineError as err:
            raise PromParseError(number, str(err), line) from None
    return samples


def parse_selected(text: str, names: frozenset[str]) -> dict[str, Series]:
    """Samples of the wanted sample names only, keyed by name (see SampleSelector)."""
    return SampleSelector(names).parse(text)


class SampleSelector:
    """Finds and parses only the lines of some sample names; build once per name set.

    One regular-expression scan locates the wanted lines, so the cost is about
    one pass over the text plus the wanted lines, not a parse of every line.
    Only names that occur become keys. A malformed line of a wanted name raises
    PromParseError; malformed lines of other names go unnoticed (that is the point).
    """

    def __init__(self, names: Iterable[str]) -> None:
        self.names = frozenset(name for name in names if name)
        self._finder = (
            re.compile(r"\n[ \t]*((" + _alternation(self.names) + r")(?:[{ \t\r][^\n]*)?)(?=\n|\Z)")
            if self.names else None
        )

    def parse(self, text: str) -> dict[str, Series]:
        """``{name: [(labels, value), ...]}`` for the wanted names present in ``text``."""
        found: dict[str, Series] = {}
        if self._finder is None:
            return found
        text = "\n" + text  # the first line then looks like every other one
        for match in self._finder.finditer(text):
            line, name = match.group(1, 2)
            try:
                sample = _parse_sample(line.rstrip(" \t\r"))
            except _LineError as err:
                # the match starts at the k-th newline of the prefixed text: line k of the original
                number = text.count("\n", 0, match.start() + 1)
                raise PromParseError(number, str(err), line.strip()) from None
            found.setdefault(name, []).append((sample.labels, sample.value))
        return found


def _alternation(names: frozenset[str]) -> str:
    """A regex alternation of ``names`` factored by common prefix (faster than a flat one)."""
    trie: dict[str, Any] = {}
    for name in names:
        node = trie
        for char in name:
            node = node.setdefault(char, {})
        node[""] = {}
    return _trie_regex(trie)


def _trie_regex(node: dict[str, Any]) -> str:
    branches: list[str] = []
    for char in sorted(key for key in node if key):
        child, chain = node[char], re.escape(char)
        while len(child) == 1 and "" not in child:
            (next_char, child), = child.items()
            chain += re.escape(next_char)
        branches.append(chain + _trie_regex(child))
    if not branches:
        return ""
    body = branches[0] if len(branches) == 1 else "(?:" + "|".join(branches) + ")"
    return f"(?:{body})?" if "" in node else body


def _check_comment(line: str) -> None:
    parts = line[1:].split(None, 3)
    if not parts or parts[0] not in ("HELP", "TYPE"):
        return
    if len(parts) < 2 or not _NAME.fullmatch(parts[1]):
        raise _LineError(f"# {parts[0]} needs a metric name")
    if parts[0] == "TYPE" and (len(parts) != 3 or parts[2] not in _TYPES):
        raise _LineError("# TYPE needs one of " + ", ".join(sorted(_TYPES)))


def _parse_sample(line: str) -> Sample:
    """Parse a stripped, non-comment line."""
    simple = _SIMPLE_LINE.fullmatch(line)
    if simple is not None:
        name, label_text, value_text = simple.groups()
        pairs = dict(_SIMPLE_PAIR.findall(label_text)) if label_text else {}
        # a value holds no quote, so '="' occurs once per pair: fewer keys means a duplicate
        if not label_text or len(pairs) == label_text.count('="'):
            return Sample(name, pairs, _parse_value(value_text))
    match = _NAME.match(line)
    if match is None:
        raise _LineError("expected a metric name")
    pos = match.end()
    labels: Labels = {}
    if pos < len(line) and line[pos] == "{":
        labels, pos = _parse_labels(line, pos + 1)
    elif pos < len(line) and line[pos] not in _BLANKS:
        raise _LineError(f"unexpected {line[pos]!r} after the metric name")
    tokens = line[pos:].split()
    if not tokens:
        raise _LineError("missing value")
    value = _parse_value(tokens[0])
    timestamp: int | None = None
    rest = tokens[1:]
    if rest and rest[0] != "#":
        if not _TIMESTAMP.fullmatch(rest[0]):
            raise _LineError(f"bad timestamp {rest[0]!r}")
        timestamp = int(rest[0])
        rest = rest[1:]
    if rest and rest[0] != "#":  # "# ..." is an OpenMetrics exemplar: ignored
        raise _LineError(f"unexpected text after the value: {rest[0]!r}")
    return Sample(match.group(), labels, value, timestamp)


def _parse_value(token: str) -> float:
    if "_" in token:  # float() accepts 1_000, Prometheus does not
        raise _LineError(f"bad value {token!r}")
    try:
        return float(token)
    except ValueError:
        raise _LineError(f"bad value {token!r}") from None


def _parse_labels(line: str, pos: int) -> tuple[Labels, int]:
    """Labels from just after ``{``; returns them and the index after ``}``."""
    labels: Labels = {}
    size = len(line)
    while True:
        while pos < size and line[pos] in _BLANKS:
            pos += 1
        if pos >= size:
            raise _LineError("unterminated label set")
        if line[pos] == "}":
            return labels, pos + 1
        match = _LABEL_NAME.match(line, pos)
        if match is None:
            raise _LineError(f"bad label name at column {pos + 1}")
        key = match.group(1)
        pos = match.end()
        close = line.find('"', pos)
        if close < 0:
            raise _LineError(f"unterminated value of label {key!r}")
        if line.find("\\", pos, close) < 0:
            value = line[pos:close]
            pos = close + 1
        else:
            value, pos = _unescape(line, pos)
        if key in labels:
            raise _LineError(f"duplicate label {key!r}")
        labels[key] = value
        while pos < size and line[pos] in _BLANKS:
            pos += 1
        if pos < size and line[pos] == ",":
            pos += 1
        elif pos >= size or line[pos] != "}":
            raise _LineError(f"expected ',' or '}}' after label {key!r}")


def _unescape(line: str, pos: int) -> tuple[str, int]:
    """A quoted label value with escapes, from just after the opening quote."""
    out: list[str] = []
    size = len(line)
    while pos < size:
        char = line[pos]
        if char == '"':
            return "".join(out), pos + 1
        if char == "\\":
            if pos + 1 >= size or line[pos + 1] not in _ESCAPES:
                raise _LineError(f"bad escape at column {pos + 1}")
            out.append(_ESCAPES[line[pos + 1]])
            pos += 2
        else:
            out.append(char)
            pos += 1
    raise _LineError("unterminated label value")
