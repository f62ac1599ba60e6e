"""Filters (JMESPath) and transforms (rename/drop/set/keep/redact) per destination."""

from __future__ import annotations

import copy
import dataclasses
import json
from typing import Any

import pytest

from tidegate.errors import ValidationFailed
from tidegate.pipeline import transform as transform_module
from tidegate.pipeline.transform import (
    MAX_FILTER_LENGTH,
    MAX_FUNCTION_CALLS,
    MAX_OPERATIONS,
    MAX_PATH_SEGMENTS,
    MAX_SET_VALUE_BYTES,
    MAX_SPEC_BYTES,
    REDACTED,
    Filter,
    Transform,
)


def segment_track() -> dict[str, Any]:
    return {
        "type": "track",
        "event": "Order Completed",
        "userId": "user-1",
        "anonymousId": "anon-1",
        "messageId": "msg-1",
        "properties": {
            "total": 150,
            "currency": "EUR",
            "email": "ada@example.com",
            "coupon": None,
            "tags": ["vip", "returning"],
            "a.b": "dotted key",
            "products": [
                {"sku": "A-1", "price": 20, "email": "x@example.com"},
                {"sku": "B-2", "price": 130, "email": "y@example.com"},
            ],
        },
        "context": {
            "ip": "203.0.113.7",
            "library": {"name": "analytics-python", "version": "2.3.0"},
            "traits": {"plan": "pro"},
        },
    }


def segment_identify() -> dict[str, Any]:
    return {
        "type": "identify",
        "userId": "user-1",
        "traits": {"email": "ada@example.com", "name": "Ada", "age": 36},
        "context": {"ip": "203.0.113.7"},
    }


def segment_page() -> dict[str, Any]:
    return {"type": "page", "name": "Pricing", "properties": {"path": "/pricing"}}


def refused(call: Any, *args: Any) -> str:
    with pytest.raises(ValidationFailed) as info:
        call(*args)
    assert info.value.status == 422
    return info.value.detail


# =======================================================================================
# Filter: matching
# =======================================================================================


@pytest.mark.parametrize(
    ("expression", "track", "identify", "page"),
    [
        ("type == 'track'", True, False, False),
        ("type != 'track'", False, True, True),
        ("event == 'Order Completed'", True, False, False),
        ("type == 'track' && event == 'Order Completed'", True, False, False),
        ("type == 'track' && event == 'Order Refunded'", False, False, False),
        ("type == 'identify' || type == 'page'", False, True, True),
        ("!(type == 'track')", False, True, True),
        ("properties.total > `100`", True, False, False),
        ("properties.total >= `150`", True, False, False),
        ("properties.total < `150`", False, False, False),
        ("properties.total <= `150`", True, False, False),
        ("properties.total == `150`", True, False, False),
        ("properties.currency == 'EUR'", True, False, False),
        ("traits.age > `18`", False, True, False),
        ("context.traits.plan == 'pro'", True, False, False),
        ("contains(properties.tags, 'vip')", True, False, False),
        ("contains(properties.tags, 'new')", False, False, False),
        ("contains(['identify', 'group'], type)", False, True, False),
        ("contains(event, 'Order')", True, False, False),
        ("starts_with(event, 'Order ')", True, False, False),
        ("ends_with(event, 'Completed')", True, False, False),
        ("starts_with(properties.path, '/pric')", False, False, True),
        ("length(properties.products[?price > `100`]) > `0`", True, False, False),
        ("properties.products[?sku == 'B-2'] | [0].price == `130`", True, False, False),
        ("max_by(properties.products, &price).sku == 'B-2'", True, False, False),
        ("sum(properties.products[*].price) > `100`", True, False, False),
        ("traits.email", False, True, False),
        ("properties.coupon", False, False, False),
        ("context.ip && !(properties.coupon)", True, True, False),
        ("!properties.coupon", False, False, False),  # ! binds tighter than . (see docs)
        ("type(userId) == 'string'", True, True, False),
    ],
)
def test_filter_on_segment_events(expression: str, track: bool, identify: bool, page: bool) -> None:
    compiled = Filter.compile(expression)
    assert compiled.matches(segment_track()) is track
    assert compiled.matches(segment_identify()) is identify
    assert compiled.matches(segment_page()) is page


@pytest.mark.parametrize(
    ("literal", "expected"),
    [
        ("false", False),
        ("null", False),
        ('""', False),
        ("[]", False),
        ("{}", False),
        ("true", True),
        ("0", True),  # 0 is true in JMESPath
        ('"x"', True),
        ("[0]", True),
        ('{"a": null}', True),
    ],
)
def test_filter_truthiness_follows_jmespath(literal: str, expected: bool) -> None:
    assert Filter.compile(f"`{literal}`").matches({}) is expected
    assert Filter.compile("value").matches({"value": json.loads(literal)}) is expected


def test_missing_field_does_not_match() -> None:
    assert Filter.compile("properties.nope.deeper").matches(segment_track()) is False


@pytest.mark.parametrize(
    "expression",
    [
        "contains('abc', `5`)",  # Python TypeError inside the function
        "'a' < `5`",  # ordering a string against a number
        "ceil(to_number('1e999'))",  # OverflowError
        "sum(properties.tags)",  # JMESPath type error: strings
        "length(properties.total)",  # JMESPath type error: number
        "sort_by(properties.products, &email)[0].sku == 'A-1' && abs(event)",
        "max_by(properties.products, &missing)",  # keys must be numbers or strings
    ],
)
def test_evaluation_errors_do_not_match_and_never_raise(expression: str) -> None:
    assert Filter.compile(expression).matches(segment_track()) is False


def test_matches_does_not_mutate_the_event() -> None:
    event = segment_track()
    before = copy.deepcopy(event)
    Filter.compile("sort_by(properties.products, &price)[0].sku == 'A-1'").matches(event)
    Filter.compile("reverse(properties.tags)[0] == 'returning'").matches(event)
    assert event == before


def test_filter_is_frozen_and_round_trips() -> None:
    expression = "type == 'track' && properties.total > `100`"
    compiled = Filter.compile(expression)
    assert compiled.source == expression
    assert Filter.compile(compiled.source) == compiled
    assert Filter(expression) == compiled
    assert hash(Filter(expression)) == hash(compiled)
    assert Filter.compile("type == 'page'") != compiled
    with pytest.raises(dataclasses.FrozenInstanceError):
        compiled.source = "x"  # type: ignore[misc]


# =======================================================================================
# Filter: compile-time refusals
# =======================================================================================


@pytest.mark.parametrize(
    ("expression", "column", "fragment"),
    [
        ("type == ", 9, "incomplete expression"),
        ("a b", 3, "Unexpected token: b"),
        ("type = 'track'", 6, "="),
        ("`{bad json", 1, "delimiter"),
        ("event == 'Order", 10, "Unclosed ' delimiter"),
        ("properties.[", 13, "incomplete expression"),
        ("properties[?total > `1`", 24, "incomplete expression"),
        ("type == 'track' && && event", 20, "invalid token"),
        ("context.ip.", 12, "got: eof"),
        ("a # b", 3, "Unknown token"),
    ],
)
def test_syntax_errors_are_refused_with_their_position(
    expression: str, column: int, fragment: str
) -> None:
    with pytest.raises(ValidationFailed) as info:
        Filter.compile(expression)
    detail = info.value.detail
    assert detail.startswith(f"filter: syntax error at column {column}:"), detail
    assert fragment in detail
    assert info.value.extensions["column"] == column


@pytest.mark.parametrize("expression", ["", "   ", "\n\t"])
def test_empty_expression_is_refused(expression: str) -> None:
    assert refused(Filter.compile, expression) == "filter: expression is empty"


def test_non_string_expression_is_refused() -> None:
    assert "must be a string" in refused(Filter.compile, 42)


def test_length_limit() -> None:
    assert Filter.compile("a" * MAX_FILTER_LENGTH).matches({"a" * MAX_FILTER_LENGTH: 1})
    detail = refused(Filter.compile, "a" * (MAX_FILTER_LENGTH + 1))
    assert detail == "filter: expression is 1025 characters long; the limit is 1024"


def test_unknown_function_is_refused_at_compile_time() -> None:
    detail = refused(Filter.compile, "type == 'track' && lenght(event) > `3`")
    assert detail.startswith("filter: unknown function lenght() at column 20;")
    assert "length" in detail  # the list of available functions


@pytest.mark.parametrize(
    ("expression", "expected"),
    [
        ("length(event, type)", "filter: length() takes 1 argument, got 2 at column 1"),
        ("starts_with(event)", "filter: starts_with() takes 2 arguments, got 1 at column 1"),
        ("not_null()", "filter: not_null() takes at least 1 argument, got 0 at column 1"),
        (
            "sort_by(properties.products, price)",
            "filter: argument 2 of sort_by() must be an expression reference such as &price "
            "at column 1",
        ),
        (
            "length(&event)",
            "filter: argument 1 of length() cannot be an expression reference (&...) at column 1",
        ),
        (
            "length(a) > length(b, c)",
            "filter: length() takes 1 argument, got 2 (called at columns 1, 13)",
        ),
    ],
)
def test_function_arguments_are_checked_at_compile_time(expression: str, expected: str) -> None:
    assert refused(Filter.compile, expression) == expected


@pytest.mark.parametrize("expression", ["&event", "[&event, type]", "type == 'x' || &event"])
def test_expression_references_only_as_function_arguments(expression: str) -> None:
    assert "&expression is only allowed" in refused(Filter.compile, expression)


def test_function_call_limit() -> None:
    allowed = "[" + ", ".join(["abs(n)"] * MAX_FUNCTION_CALLS) + "]"
    Filter.compile(allowed)
    too_many = "[" + ", ".join(["abs(n)"] * (MAX_FUNCTION_CALLS + 1)) + "]"
    assert refused(Filter.compile, too_many) == (
        "filter: expression calls functions more than 64 times"
    )


def test_bracket_nesting_limit_is_reported_with_its_column() -> None:
    Filter.compile("(" * 31 + "a" + ")" * 31)
    with pytest.raises(ValidationFailed) as info:
        Filter.compile("(" * 33 + "a" + ")" * 33)
    assert "nest more than 32 levels deep at column 33" in info.value.detail
    assert info.value.extensions["column"] == 33
    assert "nest more than 32" in refused(Filter.compile, "!" * 40 + "a")
    # Deep enough to overflow the recursive parser if it were reached.
    assert "nest more than 32" in refused(Filter.compile, "!" * 900 + "a")


def test_ast_nesting_limit_suggests_contains() -> None:
    Filter.compile(" || ".join(f"event == 'E{i}'" for i in range(20)))
    detail = refused(Filter.compile, " || ".join(f"event == 'E{i}'" for i in range(40)))
    assert "nests more than 32 levels" in detail
    assert "contains(" in detail
    assert "nests more than 32" in refused(Filter.compile, "a == `" + "[" * 33 + "]" * 33 + "`")


@pytest.mark.parametrize(
    "expression",
    [
        # Each stage doubles the value; to_string() would then serialise 2^n copies.
        "length(to_string(" + " | ".join(["[@, @]"] * 20) + "))",
        "a[]" + "".join(" | [@, @][]" for _ in range(12)),
        "to_string(to_string([to_string([to_string([to_string(@)])])]))",
        "[" + ", ".join(["@"] * 40) + "]",
        # A constant per element: 16,000 one-byte elements become 16,000 copies of it.
        'items[*].[`"' + "x" * 100 + '"`]',
        "items[*].{" + "k" * 100 + ": @}",
    ],
)
def test_expressions_that_could_blow_up_memory_are_refused(expression: str) -> None:
    assert "may build values of up to" in refused(Filter.compile, expression)


def test_join_separator_must_not_depend_on_the_event() -> None:
    Filter.compile("join(', ', properties.tags) == 'vip, returning'")
    assert "separator of join()" in refused(Filter.compile, "join(to_string(@), properties.tags)")


def test_evaluation_is_bounded_by_a_step_budget(monkeypatch: pytest.MonkeyPatch) -> None:
    expression = "length(items" + " | [*]" * 10 + ") > `0`"
    compiled = Filter.compile(expression)
    assert compiled.matches({"items": [1] * 100}) is True
    # 10 projections over 16,000 elements: ~160,000 steps, over the budget.
    assert compiled.matches({"items": [1] * 16_000}) is False
    monkeypatch.setattr(transform_module, "MAX_EVAL_STEPS", 10)
    assert compiled.matches({"items": [1] * 100}) is False
    assert Filter.compile("type == 'track'").matches({"type": "track"}) is True


def test_strings_built_by_functions_are_charged(monkeypatch: pytest.MonkeyPatch) -> None:
    compiled = Filter.compile("contains(to_string(@), 'needle')")
    event = {"text": "x" * 10_000, "other": "needle"}
    assert compiled.matches(event) is True
    monkeypatch.setattr(transform_module, "MAX_EVAL_STEPS", 100)  # 10 KB is ~157 steps
    assert compiled.matches(event) is False
    assert compiled.matches({"other": "needle"}) is True


def test_flatten_is_charged_per_element(monkeypatch: pytest.MonkeyPatch) -> None:
    compiled = Filter.compile("length(items[]) > `0`")
    assert compiled.matches({"items": [[1, 2]] * 100}) is True
    monkeypatch.setattr(transform_module, "MAX_EVAL_STEPS", 150)
    assert compiled.matches({"items": [[1, 2]] * 100}) is False


# =======================================================================================
# Transform: operations
# =======================================================================================


def apply(spec: dict[str, Any] | str, event: dict[str, Any]) -> dict[str, Any]:
    before = copy.deepcopy(event)
    result = Transform.compile(spec).apply(event)
    assert event == before, "apply() mutated its input"
    assert result is not event
    return result


class TestRename:
    def test_moves_a_value(self) -> None:
        out = apply({"rename": {"userId": "user_id"}}, {"userId": "u", "type": "track"})
        assert out == {"type": "track", "user_id": "u"}

    def test_nested_and_creates_intermediates(self) -> None:
        out = apply({"rename": {"properties.email": "person.contact.email"}}, segment_track())
        assert "email" not in out["properties"]
        assert out["person"] == {"contact": {"email": "ada@example.com"}}

    def test_missing_source_is_a_no_op(self) -> None:
        event = segment_page()
        assert apply({"rename": {"userId": "user_id"}}, event) == event

    def test_overwrites_the_target(self) -> None:
        assert apply({"rename": {"a": "b"}}, {"a": 1, "b": 2}) == {"b": 1}

    def test_target_under_a_non_object_is_skipped_and_source_kept(self) -> None:
        event = {"a": 1, "b": "text"}
        assert apply({"rename": {"a": "b.c"}}, event) == event

    def test_applied_one_at_a_time_in_order(self) -> None:
        assert apply({"rename": {"a": "b", "b": "c"}}, {"a": 1}) == {"c": 1}
        assert apply({"rename": {"b": "c", "a": "b"}}, {"a": 1}) == {"b": 1}

    def test_into_its_own_subtree(self) -> None:
        assert apply({"rename": {"a": "a.inner"}}, {"a": 1}) == {"a": {"inner": 1}}
        assert apply({"rename": {"a.b": "a"}}, {"a": {"b": 2, "c": 3}}) == {"a": 2}

    def test_same_source_and_target(self) -> None:
        assert apply({"rename": {"a.b": "a.b"}}, {"a": {"b": 1}}) == {"a": {"b": 1}}


class TestDrop:
    def test_top_level_and_nested(self) -> None:
        out = apply({"drop": ["anonymousId", "context.library"]}, segment_track())
        assert "anonymousId" not in out
        assert out["context"] == {"ip": "203.0.113.7", "traits": {"plan": "pro"}}

    def test_missing_path_is_a_no_op(self) -> None:
        event = segment_page()
        assert apply({"drop": ["nope", "properties.nope.deeper", "name.x"]}, event) == event

    def test_wildcard_as_last_segment_empties_the_level(self) -> None:
        out = apply({"drop": ["context.*"]}, segment_track())
        assert out["context"] == {}

    def test_wildcard_in_the_middle_over_objects_and_arrays(self) -> None:
        event = {
            "users": {"a": {"id": 1, "secret": "s"}, "b": {"id": 2, "secret": "t"}, "c": 3},
            "items": [{"id": 1, "secret": "s"}, {"id": 2}, "text"],
        }
        out = apply({"drop": ["users.*.secret", "items.*.secret"]}, event)
        assert out == {
            "users": {"a": {"id": 1}, "b": {"id": 2}, "c": 3},
            "items": [{"id": 1}, {"id": 2}, "text"],
        }

    def test_wildcard_on_an_array_removes_its_elements(self) -> None:
        assert apply({"drop": ["tags.*"]}, {"tags": ["a", "b"]}) == {"tags": []}

    def test_named_segments_do_not_index_arrays(self) -> None:
        event = {"items": [{"id": 1}]}
        assert apply({"drop": ["items.0", "items.id"]}, event) == event

    def test_wildcard_at_the_root(self) -> None:
        assert apply({"drop": ["*"]}, segment_page()) == {}


class TestSet:
    def test_creates_intermediates_and_overwrites(self) -> None:
        out = apply(
            {"set": {"context.source.name": "tidegate", "type": "event", "n": None}},
            segment_track(),
        )
        assert out["context"]["source"] == {"name": "tidegate"}
        assert out["context"]["ip"] == "203.0.113.7"
        assert out["type"] == "event"
        assert out["n"] is None

    @pytest.mark.parametrize("blocker", ["text", 5, None, [1, 2], True])
    def test_skipped_when_an_intermediate_is_not_an_object(self, blocker: Any) -> None:
        event = {"a": {"b": blocker}}
        assert apply({"set": {"a.b.c": 1}}, event) == event

    def test_any_json_value(self) -> None:
        value = {"list": [1, 2.5, "x", None, True], "nested": {"k": "v"}}
        assert apply({"set": {"meta": value}}, {})["meta"] == value

    def test_set_values_are_fresh_for_every_event(self) -> None:
        compiled = Transform.compile({"set": {"meta": {"tags": ["a"]}}})
        first = compiled.apply({})
        first["meta"]["tags"].append("mutated")
        assert compiled.apply({})["meta"] == {"tags": ["a"]}
        assert compiled.spec["set"]["meta"]["tags"] == ("a",)


class TestRedact:
    def test_replaces_present_values(self) -> None:
        out = apply({"redact": ["properties.email", "context.ip"]}, segment_track())
        assert out["properties"]["email"] == REDACTED == "[REDACTED]"
        assert out["context"]["ip"] == REDACTED

    def test_absent_values_are_not_created(self) -> None:
        event = segment_page()
        assert apply({"redact": ["traits.email", "name.first"]}, event) == event

    def test_whole_objects_and_null(self) -> None:
        out = apply({"redact": ["context", "properties.coupon"]}, segment_track())
        assert out["context"] == REDACTED
        assert out["properties"]["coupon"] == REDACTED

    def test_wildcards(self) -> None:
        out = apply(
            {"redact": ["properties.products.*.email", "traits.*", "properties.tags.*"]},
            {**segment_track(), "traits": {"a": 1, "b": {"c": 2}}},
        )
        assert [p["email"] for p in out["properties"]["products"]] == [REDACTED, REDACTED]
        assert [p["sku"] for p in out["properties"]["products"]] == ["A-1", "B-2"]
        assert out["traits"] == {"a": REDACTED, "b": REDACTED}
        assert out["properties"]["tags"] == [REDACTED, REDACTED]


class TestKeep:
    def test_projects_to_the_listed_paths(self) -> None:
        out = apply(
            {"keep": ["type", "event", "properties.total", "context.library.name"]},
            segment_track(),
        )
        assert out == {
            "type": "track",
            "event": "Order Completed",
            "properties": {"total": 150},
            "context": {"library": {"name": "analytics-python"}},
        }

    def test_missing_paths_and_empty_intermediates_are_omitted(self) -> None:
        out = apply({"keep": ["type", "nope", "context.nope", "name.first"]}, segment_page())
        assert out == {"type": "page"}

    def test_overlapping_paths_keep_the_whole_subtree(self) -> None:
        event = segment_track()
        for paths in (["context", "context.ip"], ["context.ip", "context"]):
            assert apply({"keep": paths}, event) == {"context": event["context"]}

    def test_keeps_the_event_key_order(self) -> None:
        assert list(apply({"keep": ["userId", "type"]}, segment_track())) == ["type", "userId"]

    def test_empty_keep_is_refused(self) -> None:
        assert "must list at least one path" in refused(Transform.compile, {"keep": []})


class TestOrder:
    """rename -> drop -> set -> keep -> redact, whatever the order of keys in the spec."""

    def test_drop_sees_renamed_paths(self) -> None:
        assert apply({"drop": ["b"], "rename": {"a": "b"}}, {"a": 1, "c": 2}) == {"c": 2}

    def test_set_after_drop(self) -> None:
        assert apply({"set": {"a": 2}, "drop": ["a"]}, {"a": 1}) == {"a": 2}

    def test_keep_after_set(self) -> None:
        spec = {"keep": ["type", "meta"], "set": {"meta.via": "tidegate", "other": 1}}
        assert apply(spec, segment_page()) == {"type": "page", "meta": {"via": "tidegate"}}

    def test_redact_last(self) -> None:
        spec = {
            "redact": ["person.email", "meta.token"],
            "keep": ["person", "meta"],
            "set": {"meta.token": "secret"},
            "rename": {"traits": "person"},
        }
        assert apply(spec, segment_identify()) == {
            "person": {"email": REDACTED, "name": "Ada", "age": 36},
            "meta": {"token": REDACTED},
        }


class TestPaths:
    def test_escaped_dot_addresses_a_key_containing_a_dot(self) -> None:
        out = apply({"rename": {"properties.a\\.b": "properties.ab"}}, segment_track())
        assert "a.b" not in out["properties"]
        assert out["properties"]["ab"] == "dotted key"
        assert apply({"set": {"x\\.y.z": 1}}, {}) == {"x.y": {"z": 1}}

    def test_escaped_backslash_and_star(self) -> None:
        event = {"*": 1, "b": 2, "c\\d": 3}
        assert apply({"drop": ["\\*"]}, event) == {"b": 2, "c\\d": 3}
        assert apply({"drop": ["c\\\\d"]}, event) == {"*": 1, "b": 2}
        # A star inside a segment is literal.
        assert apply({"drop": ["a*"]}, {"a*": 1, "ab": 2}) == {"ab": 2}

    def test_escapes_in_json_text(self) -> None:
        spec = r'{"redact": ["properties.a\\.b"]}'
        assert apply(spec, segment_track())["properties"]["a.b"] == REDACTED

    @pytest.mark.parametrize("operation", ["rename", "set", "keep"])
    def test_wildcard_only_in_drop_and_redact(self, operation: str) -> None:
        spec: dict[str, Any] = {
            "rename": {"a.*": "b"},
            "set": {"a.*": 1},
            "keep": ["a.*"],
        }
        detail = refused(Transform.compile, {operation: spec[operation]})
        assert "the wildcard * is only allowed in drop and redact" in detail
        refused(Transform.compile, {"rename": {"a": "*"}})

    @pytest.mark.parametrize(
        ("path", "expected"),
        [
            ("", "transform.drop[0]: path is empty"),
            ("a..b", 'transform.drop[0]: path "a..b" has an empty segment at character 3'),
            (".a", 'transform.drop[0]: path ".a" has an empty segment at character 1'),
            ("a.", 'transform.drop[0]: path "a." has an empty segment at character 3'),
            (
                "a\\q",
                'transform.drop[0]: path "a\\\\q" has an invalid escape at character 2 '
                "('\\\\q'); only \\. \\\\ and \\* are allowed",
            ),
            (
                "a\\",
                'transform.drop[0]: path "a\\\\" has an invalid escape at character 2 '
                "(a trailing backslash); only \\. \\\\ and \\* are allowed",
            ),
        ],
    )
    def test_malformed_paths(self, path: str, expected: str) -> None:
        assert refused(Transform.compile, {"drop": [path]}) == expected

    def test_depth_limit(self) -> None:
        deepest = ".".join(f"k{i}" for i in range(MAX_PATH_SEGMENTS))
        out = apply({"set": {deepest: 1}}, {})
        for i in range(MAX_PATH_SEGMENTS - 1):
            out = out[f"k{i}"]
        assert out == {f"k{MAX_PATH_SEGMENTS - 1}": 1}
        detail = refused(Transform.compile, {"redact": [deepest + ".more"]})
        assert detail.startswith("transform.redact[0]: path ")
        assert detail.endswith("has more than 16 segments")


# =======================================================================================
# Transform: spec validation, limits, storage
# =======================================================================================


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        (
            {"rename": {}, "rnme": {}},
            "transform: unknown key 'rnme'; allowed keys are rename, drop, set, keep, redact",
        ),
        ([], "transform: spec must be a JSON object, got array"),
        ("[1]", "transform: spec must be a JSON object, got array"),
        ({"drop": "a"}, "transform.drop: must be an array of path strings, got string"),
        ({"redact": {"a": 1}}, "transform.redact: must be an array of path strings, got object"),
        ({"rename": ["a"]}, "transform.rename: must be an object of path -> path, got array"),
        ({"set": ["a"]}, "transform.set: must be an object of path -> value, got array"),
        ({"drop": ["a", 1]}, "transform.drop[1]: must be a path string, got number"),
        (
            {"rename": {"a": None}},
            'transform.rename["a"] (target): must be a path string, got null',
        ),
        ('{"set": {"a": 1, "a": 2}}', "transform: invalid JSON: duplicate key 'a'"),
        ('{"set": {"a": NaN}}', "transform: invalid JSON: NaN is not valid JSON"),
        ('{"set": {"a": 1e999}}', "transform: invalid JSON: number 1e999 is out of range"),
        ('{"drop": [', "transform: invalid JSON at line 1 column 11: Expecting value"),
        ({"set": {"a": float("inf")}}, "transform: spec is not valid JSON"),
        ({"set": {"a": object()}}, "transform: spec is not valid JSON"),
    ],
)
def test_invalid_specs_are_refused(spec: Any, expected: str) -> None:
    assert refused(Transform.compile, spec).startswith(expected)


def test_operation_limit() -> None:
    half = MAX_OPERATIONS // 2
    spec = {"drop": [f"d{i}" for i in range(half)], "set": {f"s{i}": i for i in range(half)}}
    Transform.compile(spec)
    spec["redact"] = ["one.more"]
    assert (
        refused(Transform.compile, spec) == "transform: spec has 101 operations; the limit is 100"
    )


def test_set_value_size_limit() -> None:
    fits = "x" * (MAX_SET_VALUE_BYTES - 2)  # plus the two quotes
    Transform.compile({"set": {"a": fits}})
    detail = refused(Transform.compile, {"set": {"a": fits + "x"}})
    assert detail == 'transform.set["a"]: value is 4097 bytes of JSON; the limit is 4096'


def test_set_value_nesting_limit() -> None:
    deep: Any = 1
    for _ in range(33):
        deep = [deep]
    assert "nests more than 32 levels" in refused(Transform.compile, {"set": {"a": deep}})


def test_spec_size_limit() -> None:
    filler = "x" * (MAX_SET_VALUE_BYTES - 100)
    spec = {"set": {f"k{i}": filler for i in range(5)}}
    detail = refused(Transform.compile, spec)
    assert detail.startswith("transform: spec is ")
    assert detail.endswith(f"bytes of compact JSON; the limit is {MAX_SPEC_BYTES}")
    assert "spec text is" in refused(Transform.compile, " " * (4 * MAX_SPEC_BYTES + 1))
    assert "nested too deeply" in refused(Transform.compile, "[" * 20_000 + "]" * 20_000)


def test_to_json_round_trips_and_defines_equality() -> None:
    spec = {
        "rename": {"userId": "user.id", "properties.a\\.b": "ab"},
        "drop": ["context.library"],
        "set": {"meta.source": "tidegate", "meta.tags": ["é", 1.5]},
        "keep": ["user", "ab", "meta", "properties"],
        "redact": ["properties.email"],
    }
    compiled = Transform.compile(spec)
    text = compiled.to_json()
    assert json.loads(text) == spec
    assert ": " not in text and ", " not in text
    assert "é" in text  # not escaped: the stored form stays compact
    again = Transform.compile(text)
    assert again == compiled
    assert hash(again) == hash(compiled)
    assert again.to_json() == text
    assert Transform.compile(json.dumps(spec, indent=2)) == compiled
    assert Transform.compile({"drop": ["a"]}) != compiled
    assert repr(Transform.compile({"drop": ["a"]})) == 'Transform({"drop":["a"]})'
    assert again.apply(segment_track()) == compiled.apply(segment_track())


def test_spec_is_read_only_and_transform_frozen() -> None:
    compiled = Transform.compile({"drop": ["a"], "set": {"b": {"c": 1}}})
    assert compiled.spec["drop"] == ("a",)
    with pytest.raises(TypeError):
        compiled.spec["set"]["b"]["c"] = 2  # type: ignore[index]
    with pytest.raises(dataclasses.FrozenInstanceError):
        compiled.spec = {}  # type: ignore[misc]
    assert Transform(compiled.spec) == compiled


def test_empty_spec_returns_a_copy() -> None:
    event = segment_track()
    out = Transform.compile({}).apply(event)
    assert out == event
    assert out is not event
    out["type"] = "changed"
    assert event["type"] == "track"


def test_apply_never_mutates_the_input() -> None:
    spec = {
        "rename": {"userId": "user.id", "properties.email": "contact.email"},
        "drop": ["context.library.version", "properties.products.*.price"],
        "set": {"context.library.name": "tidegate", "properties.total": 0},
        "keep": ["type", "user", "contact", "context", "properties"],
        "redact": ["context.ip", "properties.products.*.email", "properties.tags.*"],
    }
    event = segment_track()
    before = copy.deepcopy(event)
    compiled = Transform.compile(spec)
    for _ in range(3):
        out = compiled.apply(event)
    assert event == before
    assert out["context"]["library"] == {"name": "tidegate"}
    assert out["properties"]["products"] == [
        {"sku": "A-1", "email": REDACTED},
        {"sku": "B-2", "email": REDACTED},
    ]
    assert out["contact"] == {"email": "ada@example.com"}
