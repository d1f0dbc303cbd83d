"""aipower/gateway/classifier.py: the `auto` route's prompt classes, measured on a hand-labelled set."""

from __future__ import annotations

import json
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from aipower.gateway.classifier import CLASSES, classify, explain, load_rules, parse_rules
from aipower.messages import ChatRequest, Image, Message, Part, Text

EVAL = Path(__file__).parent / "data" / "classifier_eval.jsonl"
ACCURACY_FLOOR = 0.9
# A neutral paragraph repeated to stand in for a pasted document (the eval rows give its size).
DOCUMENT = (
    "The committee met on Tuesday to review the proposal in detail. Members raised questions about timing, "
    "staffing and the responsibilities of each office, and agreed to continue the discussion next week. "
)


def rows() -> list[dict[str, Any]]:
    return [json.loads(line) for line in EVAL.read_text("utf-8").splitlines() if line.strip()]


def request_for(row: dict[str, Any]) -> ChatRequest:
    text = row["prompt"]
    if row.get("document_chars"):
        text = (DOCUMENT * (row["document_chars"] // len(DOCUMENT) + 1))[: row["document_chars"]] + "\n\n" + text
    parts: tuple[Part, ...] = (Text(text),)
    parts += tuple(Image("data:image/png;base64,iVBORw0KGgo=") for _ in range(row.get("images", 0)))
    system = Message(role="system", parts=(Text("You are a helpful assistant."),))
    return ChatRequest(model="auto", messages=(system, Message(role="user", parts=parts)))


def test_the_labelled_set_is_large_varied_and_uses_known_classes() -> None:
    labelled = rows()
    counts = Counter(row["label"] for row in labelled)
    assert len(labelled) >= 200
    assert set(counts) == set(CLASSES)
    assert min(counts.values()) >= 15
    assert len({row["prompt"] for row in labelled}) == len(labelled)


def test_accuracy_on_the_labelled_set() -> None:
    labelled = rows()
    misses = [(row["label"], classify(request_for(row)), row["prompt"][:70]) for row in labelled]
    wrong = [m for m in misses if m[0] != m[1]]
    accuracy = 1 - len(wrong) / len(labelled)
    print(f"\nclassifier accuracy: {accuracy:.3f} ({len(labelled) - len(wrong)}/{len(labelled)})")
    for expected, got, prompt in wrong:
        print(f"  expected {expected:<12} got {got:<12} {prompt!r}")
    assert accuracy >= ACCURACY_FLOOR


def test_a_typical_prompt_is_classified_well_under_a_millisecond() -> None:
    request = request_for({"prompt": "My Docker container exits immediately with code 137. Why? " * 8})
    classify(request)
    runs = 200
    started = time.perf_counter()
    for _ in range(runs):
        classify(request)
    per_call = (time.perf_counter() - started) / runs
    print(f"\nclassifier: {per_call * 1e6:.0f} microseconds per call")
    assert per_call < 0.001


@pytest.mark.parametrize(
    ("prompt", "label"),
    [
        ("Fix this: def f(x): return x +", "code"),
        ("Solve 2x + 3 = 9", "math"),
        ("帮我用Python写一个爬虫脚本", "code"),
        ("请介绍一下故宫", "chinese"),
        ("Write a haiku about rain", "creative"),
        ("What's a good name for a golden retriever puppy?", "chat"),
    ],
)
def test_decisions_follow_the_documented_order(prompt: str, label: str) -> None:
    assert classify(request_for({"prompt": prompt})) == label


def test_an_image_wins_over_the_text() -> None:
    assert classify(request_for({"prompt": "Write a Python function for this diagram", "images": 1})) == "vision"


def test_explain_names_the_patterns_behind_the_class() -> None:
    found = explain(request_for({"prompt": "```js\nconsole.log(1)\n```"}))
    assert found.label == "code"
    assert "```" in found.matched
    assert dict(found.scores)["code"] >= 4


def test_only_the_latest_user_message_is_scored() -> None:
    earlier = Message(role="user", parts=(Text("Write a sonnet about autumn."),))
    reply = Message(
        role="assistant",
        parts=(
            Text(
                "Here it is...",
            ),
        ),
    )
    latest = Message(role="user", parts=(Text("Now: what's the derivative of x^2?"),))
    assert classify(ChatRequest(model="auto", messages=(earlier, reply, latest))) == "math"


def test_the_shipped_rules_load_and_unknown_classes_are_refused() -> None:
    rules = load_rules()
    assert [c.name for c in rules.scored] == ["code", "math", "creative"]
    with pytest.raises(ValueError, match="unknown classes"):
        parse_rules(
            {
                "long_context_tokens": 1,
                "chinese_share": 0.3,
                "scan_chars": 10,
                "classes": {"poetry": {"threshold": 1, "patterns": []}},
            }
        )
