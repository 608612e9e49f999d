"""A strict parser of the Prometheus text exposition format 0.0.4, for the tests.

Written from the format's description, independently of ``taskqueue.prometheus``.
It accepts less than Prometheus does (no blank lines, no comments other
than HELP and TYPE, no timestamps) and checks more than it does:

* the text is non-empty and ends with a newline;
* every line is ``# HELP name text``, ``# TYPE name type`` or
  ``name{label="value",...} value``;
* each family has exactly one HELP and then one TYPE, both before its
  samples, and its samples are contiguous; no series appears twice;
* a sample belongs to the family its TYPE declared: ``x`` for counter and
  gauge (counters named ``*_total``), ``x``/``x_sum``/``x_count`` for a
  summary (``x`` carrying ``quantile``), ``x_bucket``/``x_sum``/``x_count``
  for a histogram;
* counters, ``_count`` and buckets are finite and non-negative, ``_count``
  an integer;
* every histogram series has buckets with strictly increasing ``le``,
  cumulative (non-decreasing) counts, a last bucket ``le="+Inf"`` equal to
  its ``_count``, and a ``_sum``.

``parse(text)`` raises :class:`FormatError` naming the line, or returns
``{family: Family}``; ``Family.samples`` maps ``(name, labels)`` (labels a
sorted tuple of pairs) to the value.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field

NAME = r"[a-zA-Z_:][a-zA-Z0-9_:]*"
LABEL = r"[a-zA-Z_][a-zA-Z0-9_]*"
HELP_RE = re.compile(rf"^# HELP ({NAME}) (.*)$")
TYPE_RE = re.compile(rf"^# TYPE ({NAME}) (counter|gauge|histogram|summary|untyped)$")
SAMPLE_RE = re.compile(rf"^({NAME})(?:\{{(.*)\}})? (\S+)$")
PAIR_RE = re.compile(rf'({LABEL})="((?:[^"\\\n]|\\[\\"n])*)"(,|$)')
VALUE_RE = re.compile(r"^(?:[+-]?(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?|NaN|[+-]Inf)$")
SUFFIXES = {"counter": ("",), "gauge": ("",), "untyped": ("",), "summary": ("", "_sum", "_count"),
            "histogram": ("_bucket", "_sum", "_count")}


class FormatError(AssertionError):
    """The text is not valid exposition format (or breaks one of the stricter rules above)."""


@dataclass
class Family:
    name: str
    type: str
    help: str
    samples: dict = field(default_factory=dict)  # (sample name, ((label, value), ...)) -> float


def parse(text: str) -> dict[str, Family]:
    if not text or not text.endswith("\n"):
        raise FormatError("the exposition must be non-empty and end with a newline")
    families: dict[str, Family] = {}
    helps: dict[str, str] = {}
    current: Family | None = None
    for number, line in enumerate(text[:-1].split("\n"), 1):
        where = f"line {number}: {line!r}"
        if line.startswith("#"):
            help_match, type_match = HELP_RE.match(line), TYPE_RE.match(line)
            if help_match:
                name = help_match.group(1)
                if name in helps:
                    raise FormatError(f"{where}: a second HELP for {name}")
                if name in families:
                    raise FormatError(f"{where}: HELP after the TYPE of {name}")
                helps[name] = help_match.group(2)
            elif type_match:
                name, kind = type_match.groups()
                if name in families:
                    raise FormatError(f"{where}: a second TYPE for {name}")
                if name not in helps:
                    raise FormatError(f"{where}: TYPE before (or without) HELP for {name}")
                if kind == "counter" and not name.endswith("_total"):
                    raise FormatError(f"{where}: a counter's name must end in _total")
                current = families[name] = Family(name, kind, helps[name])
            else:
                raise FormatError(f"{where}: not a HELP or TYPE line")
            continue
        match = SAMPLE_RE.match(line)
        if not match:
            raise FormatError(f"{where}: not a sample line")
        name, labels_text, value_text = match.groups()
        if current is None or not _belongs(name, current):
            raise FormatError(f"{where}: sample outside its family's block (declare HELP and TYPE first)")
        labels = _labels(labels_text, where)
        if not VALUE_RE.match(value_text):
            raise FormatError(f"{where}: bad value {value_text!r}")
        key = (name, labels)
        if key in current.samples:
            raise FormatError(f"{where}: duplicate series")
        current.samples[key] = float(value_text)
        _check_sample(current, name, dict(labels), float(value_text), where)
    for family in families.values():
        if not family.samples:
            raise FormatError(f"family {family.name} has no sample")
        if family.type == "histogram":
            _check_histogram(family)
    missing = set(helps) - set(families)
    if missing:
        raise FormatError(f"HELP without TYPE for {sorted(missing)}")
    return families


def _belongs(name: str, family: Family) -> bool:
    return any(name == family.name + suffix for suffix in SUFFIXES[family.type])


def _labels(text: str | None, where: str) -> tuple:
    if text is None:
        return ()
    pairs, pos = [], 0
    while pos < len(text):
        match = PAIR_RE.match(text, pos)
        if not match or (match.group(3) == "," and match.end() == len(text)):
            raise FormatError(f"{where}: bad label set {text!r}")
        value = re.sub(r"\\(.)", lambda m: "\n" if m.group(1) == "n" else m.group(1), match.group(2))
        pairs.append((match.group(1), value))
        pos = match.end()
    if not pairs:
        raise FormatError(f"{where}: empty braces")
    names = [name for name, _ in pairs]
    if len(set(names)) != len(names):
        raise FormatError(f"{where}: a label repeated")
    return tuple(sorted(pairs))


def _check_sample(family: Family, name: str, labels: dict, value: float, where: str) -> None:
    must_count = family.type == "counter" or name.endswith(("_count", "_bucket"))
    if must_count and not (math.isfinite(value) and value >= 0):
        raise FormatError(f"{where}: a count must be finite and >= 0")
    if name.endswith("_count") and family.type in ("summary", "histogram") and value != int(value):
        raise FormatError(f"{where}: _count must be an integer")
    if family.type == "histogram" and name.endswith("_bucket") and "le" not in labels:
        raise FormatError(f"{where}: a bucket without le")
    if family.type == "summary" and name == family.name and "quantile" not in labels:
        raise FormatError(f"{where}: a summary sample without quantile")
    if "le" in labels:
        float(labels["le"])  # "+Inf" parses; anything else must be a number


def _check_histogram(family: Family) -> None:
    series: dict[tuple, dict] = {}
    for (name, labels), value in family.samples.items():
        rest = tuple(pair for pair in labels if pair[0] != "le")
        entry = series.setdefault(rest, {"buckets": []})
        if name.endswith("_bucket"):
            entry["buckets"].append((float(dict(labels)["le"]), value))
        else:
            entry[name[len(family.name):]] = value
    for rest, entry in series.items():
        what = f"histogram {family.name}{dict(rest) or ''}"
        buckets = entry["buckets"]  # in the order they appeared
        if not buckets or "_count" not in entry or "_sum" not in entry:
            raise FormatError(f"{what}: needs buckets, _sum and _count")
        bounds = [le for le, _ in buckets]
        if any(nxt <= prev for prev, nxt in zip(bounds, bounds[1:])):
            raise FormatError(f"{what}: le not strictly increasing: {bounds}")
        counts = [n for _, n in buckets]
        if any(b < a for a, b in zip(counts, counts[1:])):
            raise FormatError(f"{what}: bucket counts not cumulative: {counts}")
        if bounds[-1] != math.inf:
            raise FormatError(f"{what}: the last bucket must be le=\"+Inf\"")
        if counts[-1] != entry["_count"]:
            raise FormatError(f"{what}: +Inf bucket {counts[-1]} != _count {entry['_count']}")


def values(families: dict[str, Family]) -> dict[str, float]:
    """Every sample as ``'name{a="x",b="y"}' -> value`` (labels sorted), for easy assertions."""
    flat = {}
    for family in families.values():
        for (name, labels), value in family.samples.items():
            text = ",".join(f'{k}="{v}"' for k, v in labels)
            flat[f"{name}{{{text}}}" if labels else name] = value
    return flat
