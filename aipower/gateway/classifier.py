"""The prompt classifier behind the `auto` route: features and weighted regexes read from routing_rules.toml.

Domain layer. Explainable by construction: the class comes from an image, the prompt's size, its share of CJK
characters, or the patterns that matched (see `explain`). Runs in microseconds on a typical prompt.
"""

from __future__ import annotations

import re
import tomllib
from dataclasses import dataclass
from importlib import resources
from typing import Any, Final

from aipower.gateway import tokens
from aipower.messages import ChatRequest, Image, message_text

CLASSES: Final = ("code", "math", "long_context", "vision", "chinese", "creative", "chat")
_DECISIVE = ("code", "math")  # these beat the language of the prompt; creative does not
_MAX_TERMS = 3  # a pattern adds its weight once per distinct matched term, at most this many times
_CJK = re.compile(r"[\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff]")


@dataclass(frozen=True, slots=True)
class ScoredClass:
    name: str
    threshold: int
    patterns: tuple[tuple[re.Pattern[str], int, bool], ...]  # (regex, weight, case-sensitive)


@dataclass(frozen=True, slots=True)
class Rules:
    long_context_tokens: int
    chinese_share: float
    scan_chars: int
    scored: tuple[ScoredClass, ...]  # in tie-break order


@dataclass(frozen=True, slots=True)
class Classification:
    label: str
    scores: tuple[tuple[str, int], ...] = ()
    matched: tuple[str, ...] = ()  # the patterns behind the winning score


def parse_rules(data: dict[str, Any]) -> Rules:
    scored = tuple(
        ScoredClass(
            name=name,
            threshold=int(spec["threshold"]),
            patterns=tuple(_pattern(p) for p in spec["patterns"]),
        )
        for name, spec in data["classes"].items()
    )
    unknown = [c.name for c in scored if c.name not in CLASSES]
    if unknown:
        raise ValueError(f"routing rules: unknown classes {unknown}")
    return Rules(int(data["long_context_tokens"]), float(data["chinese_share"]), int(data["scan_chars"]), scored)


def _pattern(entry: dict[str, Any]) -> tuple[re.Pattern[str], int, bool]:
    # Patterns are written in lower case and run on lower-cased text (several times faster than re.IGNORECASE),
    # unless marked case_sensitive.
    return re.compile(entry["re"], re.MULTILINE), int(entry["weight"]), bool(entry.get("case_sensitive", False))


def load_rules() -> Rules:
    return parse_rules(tomllib.loads(resources.files("aipower").joinpath("routing_rules.toml").read_text("utf-8")))


DEFAULT_RULES: Final = load_rules()


def classify(request: ChatRequest, rules: Rules = DEFAULT_RULES) -> str:
    return explain(request, rules).label


def explain(request: ChatRequest, rules: Rules = DEFAULT_RULES) -> Classification:
    """The class of a request, with the scores and patterns that decided it."""
    if any(isinstance(part, Image) for m in request.messages for part in m.parts):
        return Classification("vision")
    if tokens.estimate_prompt(request) > rules.long_context_tokens:
        return Classification("long_context")
    text = _latest_user_text(request)[-rules.scan_chars :]
    scores, matched = _score(text, rules)
    best = max(rules.scored, key=lambda c: scores[c.name], default=None)  # max() keeps the first of equals
    winner = best.name if best is not None and scores[best.name] >= best.threshold else None
    summary = tuple(scores.items())
    if winner in _DECISIVE:
        return Classification(winner, summary, matched[winner])
    if text and len(_CJK.findall(text)) / len(text) >= rules.chinese_share:
        return Classification("chinese", summary)
    if winner is not None:
        return Classification(winner, summary, matched[winner])
    return Classification("chat", summary)


def _score(text: str, rules: Rules) -> tuple[dict[str, int], dict[str, tuple[str, ...]]]:
    scores: dict[str, int] = {}
    matched: dict[str, tuple[str, ...]] = {}
    lowered = text.lower()
    for scored in rules.scored:
        hits = [(p, weight, _distinct(p, text if case else lowered)) for p, weight, case in scored.patterns]
        scores[scored.name] = sum(weight * count for _, weight, count in hits)
        matched[scored.name] = tuple(pattern.pattern for pattern, _, count in hits if count)
    return scores, matched


def _distinct(pattern: re.Pattern[str], text: str) -> int:
    """How many different terms a pattern matches, up to _MAX_TERMS: two geometry words say more than one."""
    seen: set[str] = set()
    for match in pattern.finditer(text):
        seen.add(match.group(0).lower())
        if len(seen) == _MAX_TERMS:
            break
    return len(seen)


def _latest_user_text(request: ChatRequest) -> str:
    for message in reversed(request.messages):
        if message.role == "user":
            return message_text(message)
    return ""
