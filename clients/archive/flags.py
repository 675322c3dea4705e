"""``--flag angry>=0.75``: rules that mark summary rows (the ``flags`` column) for a person to look at."""

from __future__ import annotations

import operator
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass

__all__ = ["Flag", "parse_flag", "row_flags"]

_OPS: dict[str, Callable[[float, float], bool]] = {
    ">=": operator.ge, ">": operator.gt, "<=": operator.le, "<": operator.lt,
}
_RULE = re.compile(r"^\s*([^<>=\s]+)\s*(>=|<=|>|<)\s*([0-9]*\.?[0-9]+(?:[eE][-+]?[0-9]+)?)\s*$")


@dataclass(frozen=True)
class Flag:
    """``label op threshold`` on a row's score of ``label``; ``text`` is how it is written in ``flags``."""

    label: str
    op: str
    threshold: float

    @property
    def text(self) -> str:
        return f"{self.label}{self.op}{self.threshold:g}"

    def matches(self, scores: Mapping[str, float]) -> bool:
        score = scores.get(self.label)
        return score is not None and _OPS[self.op](float(score), self.threshold)


def parse_flag(text: str, labels: Iterable[str] | None = None) -> Flag:
    """Parse ``angry>=0.75`` (operators ``>=``, ``>``, ``<=``, ``<``); ``ValueError`` names the problem,
    including a label the model does not have."""
    m = _RULE.match(text)
    if not m:
        raise ValueError(f"--flag {text!r}: write LABEL>=VALUE, e.g. angry>=0.75 (operators >=, >, <=, <)")
    label, op, value = m.group(1), m.group(2), float(m.group(3))
    if labels is not None:
        known = list(labels)
        if label not in known:
            raise ValueError(
                f"--flag {text!r}: the model has no label {label!r} (labels: {', '.join(known)})"
            )
    return Flag(label, op, value)


def row_flags(flags: Iterable[Flag], scores: Mapping[str, float]) -> str:
    """The ``flags`` cell: the rules ``scores`` meet, ``;``-separated."""
    return ";".join(f.text for f in flags if f.matches(scores))
