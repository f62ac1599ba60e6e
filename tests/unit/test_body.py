"""decode_json's shape checks: the byte-level shortcut must refuse exactly what a full
walk of the decoded value refuses."""

from __future__ import annotations

import json
import random
from typing import Any

import pytest

from tidegate.api.ingest.body import MAX_DEPTH, decode_json
from tidegate.errors import InvalidRequest

LIMIT = 2**63


def faults(value: Any, depth: int = 1) -> set[str]:
    """Everything wrong with a decoded value, by plain recursion: 'nesting', 'range'."""
    if isinstance(value, dict | list):
        found = {"nesting"} if depth > MAX_DEPTH else set()
        for child in value.values() if isinstance(value, dict) else value:
            found |= faults(child, depth + 1)
        return found
    if isinstance(value, int) and not isinstance(value, bool) and not -LIMIT <= value < LIMIT:
        return {"range"}
    return set()


def verdict(body: bytes) -> str | None:
    try:
        decode_json(body)
    except InvalidRequest as exc:
        return "nesting" if "nesting" in exc.detail else "range"
    return None


def random_value(rng: random.Random, depth: int) -> Any:
    roll = rng.random()
    if depth < 70 and roll < 0.35:
        return [random_value(rng, depth + 1) for _ in range(rng.randint(0, 3))]
    if depth < 70 and roll < 0.7:
        return {f"k{i}": random_value(rng, depth + 1) for i in range(rng.randint(0, 3))}
    return rng.choice(
        [
            rng.randint(-(2**70), 2**70),
            rng.randint(-(10**18), 10**18),
            LIMIT - 1,
            LIMIT,
            -LIMIT,
            -LIMIT - 1,
            True,
            None,
            1.5e300,
            "[[[{{{",
            "1234567890123456789012",
        ]
    )


@pytest.mark.parametrize("seed", range(400))
def test_agrees_with_a_full_walk(seed: int) -> None:
    rng = random.Random(seed)  # noqa: S311 - reproducible test data
    value = random_value(rng, 1)
    if rng.random() < 0.5:  # deep chains, around the limit
        for _ in range(rng.randint(55, 70)):
            value = [value] if rng.random() < 0.5 else {"a": value}
    body = json.dumps(value).encode()
    found = faults(json.loads(body))
    # Refused exactly when something is wrong, naming one of the faults.
    assert (verdict(body) in found) if found else verdict(body) is None


@pytest.mark.parametrize(
    ("body", "fault"),
    [
        (b"[" * MAX_DEPTH + b"]" * MAX_DEPTH, None),
        (b"[" * (MAX_DEPTH + 1) + b"]" * (MAX_DEPTH + 1), "nesting"),
        (b'{"s": "' + b"[" * 200 + b'"}', None),  # brackets in a string are not nesting
        (b'{"a": 9223372036854775807, "b": -9223372036854775808}', None),
        (b'{"a": 9223372036854775808}', "range"),
        (b'{"a": -9223372036854775809}', "range"),
        (b'{"a": 999999999999999999}', None),  # 18 digits: the shortcut's edge
        (b'{"a": "12345678901234567890"}', None),  # a long digit run in a string
        (b"12345678901234567890", "range"),  # a bare integer
        (b"true", None),
    ],
)
def test_edges(body: bytes, fault: str | None) -> None:
    assert verdict(body) == fault
