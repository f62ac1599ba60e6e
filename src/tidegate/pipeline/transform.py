"""Per-destination filters and transforms: declarative, and safe on tenant input.

A `Filter` is a JMESPath expression evaluated against the event; the event is
delivered to the destination when the result is truthy. A `Transform` is a small
JSON spec of rename / drop / set / keep / redact operations on dot-separated paths.

Both are compiled once, when the destination is saved, and every problem is reported
then as `ValidationFailed` (422). Evaluation runs per event per destination, so it is
cheap and bounded:

* No eval/exec anywhere: JMESPath is interpreted by `jmespath`'s tree interpreter and
  transforms by the few functions below.
* Filters are at most 1024 characters, 64 function calls and 32 levels of nesting.
  JMESPath has no loops or recursion, so evaluation time is bounded by the expression
  size times the event size; events are limited to 32 KiB of JSON at ingest.
* Memory: JMESPath can build values larger than its input (`[@, @] | [@, @] | ...`
  doubles at each stage). A conservative static estimate made at compile time refuses
  expressions whose values could exceed 32 times the largest event (1 MiB).
* Time: a step budget of `MAX_EVAL_STEPS` interpreter steps per evaluation; a filter
  that runs out counts as not matching, like one that fails (a type error in a
  function, say).
* Transform paths are pre-parsed, at most 16 segments deep; `apply()` copies only the
  objects it changes (copy-on-write) and never mutates its input.

The user-facing reference is `docs/filters-and-transforms.md`.
"""

from __future__ import annotations

import enum
import json
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Final, TypeAlias

import jmespath
import msgspec
from jmespath import exceptions as jp_exceptions
from jmespath import functions as jp_functions
from jmespath import lexer as jp_lexer
from jmespath import visitor as jp_visitor

from tidegate.errors import ValidationFailed

__all__ = [
    "MAX_EVAL_STEPS",
    "MAX_EVENT_BYTES",
    "MAX_FILTER_LENGTH",
    "MAX_FUNCTION_CALLS",
    "MAX_NESTING",
    "MAX_OPERATIONS",
    "MAX_PATH_SEGMENTS",
    "MAX_SET_VALUE_BYTES",
    "MAX_SPEC_BYTES",
    "REDACTED",
    "Filter",
    "Transform",
]

# ---------------------------------------------------------------------------------------
# Limits
# ---------------------------------------------------------------------------------------

#: Events are refused at ingest above this size (JSON bytes); the filter limits below
#: are sized for it.
MAX_EVENT_BYTES: Final = 32 * 1024
MAX_FILTER_LENGTH: Final = 1024
MAX_FUNCTION_CALLS: Final = 64
MAX_NESTING: Final = 32
#: Static bound on the size of any value a filter may build, from a MAX_EVENT_BYTES event.
MAX_INTERMEDIATE_BYTES: Final = 32 * MAX_EVENT_BYTES
#: Interpreter steps per evaluation: node visits, plus one per array element that a
#: flatten or a function walks or builds, plus one per 64 characters of strings that
#: functions build. A few hundred cover realistic filters; the budget bounds the rest.
MAX_EVAL_STEPS: Final = 10_000
_CHARS_PER_STEP: Final = 64  # a function that returns a string is charged per 64 chars

MAX_SPEC_BYTES: Final = 16 * 1024
MAX_SET_VALUE_BYTES: Final = 4 * 1024
MAX_SET_VALUE_NESTING: Final = 32
MAX_OPERATIONS: Final = 100
MAX_PATH_SEGMENTS: Final = 16
REDACTED: Final = "[REDACTED]"

# Spec text is parsed before its compact size can be measured; refuse absurd inputs early.
_MAX_SPEC_TEXT_BYTES: Final = 4 * MAX_SPEC_BYTES


def _json_type(value: object) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int | float):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, Mapping):
        return "object"
    if isinstance(value, list | tuple):
        return "array"
    return type(value).__name__


# =======================================================================================
# Filter
# =======================================================================================

_FUNCTIONS: Final[Mapping[str, Any]] = jp_functions.Functions.FUNCTION_TABLE

# Argument positions that take an expression reference (`&expr`).
_EXPREF_ARGS: Final[Mapping[str, int]] = {"map": 0, "sort_by": 1, "min_by": 1, "max_by": 1}

# Functions whose result is a number, a boolean or a short string.
_SCALAR_FUNCTIONS: Final = frozenset(
    {
        "abs",
        "avg",
        "ceil",
        "contains",
        "ends_with",
        "floor",
        "length",
        "starts_with",
        "sum",
        "to_number",
        "type",
    }
)
# Functions whose result is no larger than their largest argument.
_SHRINKING_FUNCTIONS: Final = frozenset(
    {"keys", "max", "min", "not_null", "reverse", "sort", "to_array", "values"}
)

_OPENERS: Final = frozenset({"lparen", "lbracket", "lbrace", "filter"})
_CLOSERS: Final = frozenset({"rparen", "rbracket", "rbrace"})
_UNARY: Final = frozenset({"not", "expref"})

# Size estimates are linear functions of the input size n: (a, b) means a*n + b bytes.
_Lin: TypeAlias = tuple[float, float]
_CAP: Final = 1e18  # saturate, so that products never reach inf (and 0 * inf never nan)
_ZERO: Final[_Lin] = (0.0, 0.0)
_IDENT: Final[_Lin] = (1.0, 0.0)
_BOOL: Final[_Lin] = (0.0, 5.0)
_SMALL: Final[_Lin] = (0.0, 32.0)


def _sat(x: float) -> float:
    return x if x < _CAP else _CAP


def _add(*terms: _Lin) -> _Lin:
    return (_sat(sum(t[0] for t in terms)), _sat(sum(t[1] for t in terms)))


def _max(*terms: _Lin) -> _Lin:
    return (max(t[0] for t in terms), max(t[1] for t in terms))


def _compose(outer: _Lin, inner: _Lin) -> _Lin:
    """outer(inner(n))."""
    return (_sat(outer[0] * inner[0]), _sat(outer[0] * inner[1] + outer[1]))


def _per_element(per: _Lin, base: _Lin) -> _Lin:
    """Sum of per(e) over the elements e of a value of size base(n).

    Every element is at least one byte, so sum(a*|e| + b) <= (a + b) * base.
    """
    factor = _sat(per[0] + per[1])
    return (_sat(factor * base[0]), _sat(factor * base[1]))


def _json_size(value: Any) -> float:
    try:
        return float(len(json.dumps(value)))
    except (TypeError, ValueError, RecursionError):
        return _CAP


def _json_depth(value: Any) -> int:
    """Nesting depth of a JSON value (a scalar is 0), computed without recursion."""
    deepest = 0
    stack: list[tuple[Any, int]] = [(value, 0)]
    while stack:
        current, depth = stack.pop()
        if isinstance(current, Mapping):
            children: Iterable[Any] = current.values()
        elif isinstance(current, list):
            children = current
        else:
            continue
        deepest = max(deepest, depth + 1)
        stack.extend((child, depth + 1) for child in children)
    return deepest


def _plural(count: int, word: str) -> str:
    return f"{count} {word}" if count == 1 else f"{count} {word}s"


class _Tokens:
    """The lexer's view of the expression, used for error positions and nesting."""

    def __init__(self, expression: str) -> None:
        self.calls: dict[str, list[int]] = {}
        self.max_nesting = 0
        self.max_nesting_at = 0
        depth = 0
        unary_run = 0
        previous: Mapping[str, Any] | None = None
        for token in jp_lexer.Lexer().tokenize(expression):
            kind = token["type"]
            if (
                kind == "lparen"
                and previous is not None
                and previous["type"] in ("unquoted_identifier", "quoted_identifier")
            ):
                name = str(previous["value"])
                self.calls.setdefault(name, []).append(int(previous["start"]) + 1)
            if kind in _OPENERS:
                depth += 1
            elif kind in _CLOSERS:
                depth = max(0, depth - 1)
            unary_run = unary_run + 1 if kind in _UNARY else 0
            if depth + unary_run > self.max_nesting:
                self.max_nesting = depth + unary_run
                self.max_nesting_at = int(token["start"]) + 1
            previous = token

    def where(self, function: str) -> str:
        columns = self.calls.get(function, [])
        if len(columns) == 1:
            return f" at column {columns[0]}"
        if columns:
            return " (called at columns " + ", ".join(map(str, columns)) + ")"
        return ""


def _syntax_error(expression: str, error: jp_exceptions.JMESPathError) -> ValidationFailed:
    if isinstance(error, jp_exceptions.LexerError):
        position, message = error.lexer_position, error.message
        near: str | None = expression[position : position + 16]
    elif isinstance(error, jp_exceptions.IncompleteExpressionError):
        position, message, near = len(expression), "incomplete expression", None
    elif isinstance(error, jp_exceptions.ParseError):
        position, message = error.lex_position, error.msg
        near = str(error.token_value) if error.token_value not in (None, "") else None
        if message == "Invalid jmespath expression":
            message = f"unexpected token {error.token_type.lower()}"
    else:
        position, message, near = 0, str(error), None
    column = position + 1
    if near and len(near) > 16:
        near = near[:15] + "…"
    where = f"near {near!r}" if near else "at the end of the expression"
    return ValidationFailed(
        f"filter: syntax error at column {column}: {message} ({where})", column=column
    )


def _node_children(node: Mapping[str, Any]) -> list[Mapping[str, Any]]:
    if node["type"] in ("literal", "slice", "index"):
        return []
    return [child for child in node.get("children", ()) if isinstance(child, Mapping)]


def _check_call(node: Mapping[str, Any], tokens: _Tokens) -> None:
    name = str(node["value"])
    if name not in _FUNCTIONS:
        raise ValidationFailed(
            f"filter: unknown function {name}(){tokens.where(name)}; "
            f"available functions: {', '.join(sorted(_FUNCTIONS))}"
        )
    signature = _FUNCTIONS[name]["signature"]
    args = node["children"]
    variadic = bool(signature) and bool(signature[-1].get("variadic"))
    if variadic and len(args) < len(signature):
        raise ValidationFailed(
            f"filter: {name}() takes at least {_plural(len(signature), 'argument')}, "
            f"got {len(args)}{tokens.where(name)}"
        )
    if not variadic and len(args) != len(signature):
        raise ValidationFailed(
            f"filter: {name}() takes {_plural(len(signature), 'argument')}, "
            f"got {len(args)}{tokens.where(name)}"
        )
    expref_at = _EXPREF_ARGS.get(name)
    for index, arg in enumerate(args):
        if index == expref_at and arg["type"] != "expref":
            raise ValidationFailed(
                f"filter: argument {index + 1} of {name}() must be an expression "
                f"reference such as &price{tokens.where(name)}"
            )
        if index != expref_at and arg["type"] == "expref":
            raise ValidationFailed(
                f"filter: argument {index + 1} of {name}() cannot be an expression "
                f"reference (&...){tokens.where(name)}"
            )


def _estimate(node: Mapping[str, Any], sizes: Mapping[int, tuple[_Lin, _Lin]]) -> tuple[_Lin, _Lin]:
    """(output size, peak size) of a node as linear functions of its input size.

    Sizes are JSON bytes; the estimate is deliberately conservative.
    """
    kind = node["type"]
    children = _node_children(node)
    outs = [sizes[id(child)][0] for child in children]
    peaks = [sizes[id(child)][1] for child in children]
    if kind in ("field", "index", "slice", "current", "identity"):
        return _IDENT, _IDENT
    if kind == "literal":
        size = (0.0, _json_size(node["value"]))
        return size, size
    if kind == "comparator":
        return _BOOL, _max(peaks[0], _add(outs[0], peaks[1]), _BOOL)
    if kind == "not_expression":
        return _BOOL, _max(peaks[0], _BOOL)
    if kind in ("and_expression", "or_expression"):
        return _max(*outs), _max(*peaks)
    if kind in ("subexpression", "pipe", "index_expression"):
        out, peak = _IDENT, _ZERO
        for child_out, child_peak in zip(outs, peaks, strict=True):
            peak = _max(peak, _compose(child_peak, out))
            out = _compose(child_out, out)
        return out, _max(peak, out)
    if kind in ("projection", "value_projection", "filter_projection"):
        out = _per_element(outs[1], outs[0])
        peak = _max(peaks[0], _compose(peaks[1], outs[0]), out)
        if kind == "filter_projection":
            peak = _max(peak, _compose(peaks[2], outs[0]))
        return out, peak
    if kind == "flatten":
        return outs[0], peaks[0]
    if kind == "key_val_pair":
        overhead = (0.0, float(len(json.dumps(node["value"])) + 2))
        return _add(outs[0], overhead), _add(peaks[0], overhead)
    if kind in ("multi_select_list", "multi_select_dict"):
        # Children run one after the other: finished results are held while the next
        # one runs, so the peak is all the outputs plus the largest transient peak.
        overhead = (0.0, float(len(children) + 2))
        return _add(*outs, overhead), _add(*outs, _max(*peaks), overhead)
    if kind == "expref":
        # Evaluated by the function that receives it; see function_expression.
        return (0.0, 1.0), (0.0, 1.0)
    if kind == "function_expression":
        return _estimate_call(node, children, outs, peaks, sizes)
    raise ValidationFailed(f"filter: unsupported construct {kind!r}")


def _estimate_call(
    node: Mapping[str, Any],
    children: Sequence[Mapping[str, Any]],
    outs: Sequence[_Lin],
    peaks: Sequence[_Lin],
    sizes: Mapping[int, tuple[_Lin, _Lin]],
) -> tuple[_Lin, _Lin]:
    name = str(node["value"])
    held = _add(*outs, _max(*peaks)) if peaks else _ZERO  # as for multi-selects
    if name in _SCALAR_FUNCTIONS:
        out = _SMALL
    elif name in _SHRINKING_FUNCTIONS:
        out = _add(_max(*outs), (0.0, 2.0))
    elif name == "merge":
        out = _add(*outs)
    elif name == "to_string":
        # JSON text of the argument, ASCII-escaped: a non-ASCII character takes up to
        # three times its UTF-8 size (\u00e9), and re-encoding JSON text at most
        # doubles it (\" and \\).
        out = _compose((3.0, 2.0), outs[0])
    elif name == "join":
        separator = outs[0]
        if separator[0] > 0:
            raise ValidationFailed(
                "filter: the separator of join() must not depend on the event "
                "(use a string literal such as ', ')"
            )
        out = _per_element((1.0, separator[1]), outs[1])
    else:  # map, sort_by, min_by, max_by: an expression applied to each element
        array_at = 1 - _EXPREF_ARGS[name]
        array = outs[array_at]
        expression = children[_EXPREF_ARGS[name]]["children"][0]
        per_out, per_peak = sizes[id(expression)]
        results = _per_element(per_out, array)
        out = results if name == "map" else array
        held = _max(held, _add(array, _compose(per_peak, array)), _add(array, results))
    return out, _max(out, held)


def _check_ast(root: Mapping[str, Any], tokens: _Tokens) -> None:
    """Walk the AST without recursion: nesting, functions, and the size estimate."""
    calls = 0
    allowed_exprefs: set[int] = set()  # function arguments are visited after the call
    order: list[Mapping[str, Any]] = []  # pre-order; reversed, children come first
    stack: list[tuple[Mapping[str, Any], int]] = [(root, 1)]
    while stack:
        node, depth = stack.pop()
        if node["type"] == "literal":
            depth += _json_depth(node["value"])
        if depth > MAX_NESTING:
            raise ValidationFailed(
                f"filter: expression nests more than {MAX_NESTING} levels deep "
                "(each &&, ||, comparison, function call, bracket and JSON literal level "
                "counts); for long lists of alternatives use contains(['A', 'B'], event)"
            )
        if node["type"] == "function_expression":
            calls += 1
            if calls > MAX_FUNCTION_CALLS:
                raise ValidationFailed(
                    f"filter: expression calls functions more than {MAX_FUNCTION_CALLS} times"
                )
            _check_call(node, tokens)
            expref_at = _EXPREF_ARGS.get(str(node["value"]))
            if expref_at is not None:
                allowed_exprefs.add(id(node["children"][expref_at]))
        elif node["type"] == "expref" and id(node) not in allowed_exprefs:
            raise ValidationFailed(
                "filter: &expression is only allowed as an argument of "
                "map(), sort_by(), min_by() and max_by()"
            )
        order.append(node)
        stack.extend((child, depth + 1) for child in _node_children(node))

    sizes: dict[int, tuple[_Lin, _Lin]] = {}
    for node in reversed(order):
        sizes[id(node)] = _estimate(node, sizes)
    a, b = sizes[id(root)][1]
    peak = a * MAX_EVENT_BYTES + b
    if peak > MAX_INTERMEDIATE_BYTES:
        raise ValidationFailed(
            f"filter: expression may build values of up to {_human_bytes(peak)} from a "
            f"{_human_bytes(MAX_EVENT_BYTES)} event "
            f"(limit {_human_bytes(MAX_INTERMEDIATE_BYTES)}); "
            "reduce multi-selects ([a, b], {x: a}), repeated pipes and to_string()/join() "
            "expansion"
        )


def _human_bytes(size: float) -> str:
    if size >= 1024**3 * 1024:
        return "more than 1 TiB"
    for unit, scale in (("GiB", 1024**3), ("MiB", 1024**2), ("KiB", 1024)):
        if size >= scale:
            return f"{size / scale:.4g} {unit}"
    return f"{size:.0f} bytes"


def _compile_filter(expression: object) -> Mapping[str, Any]:
    if not isinstance(expression, str):
        raise ValidationFailed(f"filter: must be a string, got {_json_type(expression)}")
    if not expression.strip():
        raise ValidationFailed("filter: expression is empty")
    if len(expression) > MAX_FILTER_LENGTH:
        raise ValidationFailed(
            f"filter: expression is {len(expression)} characters long; "
            f"the limit is {MAX_FILTER_LENGTH}"
        )
    try:
        tokens = _Tokens(expression)
    except jp_exceptions.JMESPathError as error:
        raise _syntax_error(expression, error) from None
    except RecursionError:  # a JSON literal nested hundreds deep
        raise ValidationFailed(
            f"filter: expression nests too deeply (limit {MAX_NESTING})"
        ) from None
    if tokens.max_nesting > MAX_NESTING:
        raise ValidationFailed(
            f"filter: brackets, parentheses and !/& operators nest more than {MAX_NESTING} "
            f"levels deep at column {tokens.max_nesting_at}",
            column=tokens.max_nesting_at,
        )
    try:
        parsed = jmespath.compile(expression)
    except jp_exceptions.JMESPathError as error:
        raise _syntax_error(expression, error) from None
    except RecursionError:
        raise ValidationFailed(
            f"filter: expression nests too deeply (limit {MAX_NESTING})"
        ) from None
    root: Mapping[str, Any] = parsed.parsed
    _check_ast(root, tokens)
    return root


# jmespath's built-in functions; the class is stateless, so one instance serves all.
_FUNCTION_IMPL: Final = jp_functions.Functions()


class _BudgetExceeded(Exception):
    """The evaluation ran out of steps."""


class _BoundedInterpreter(jp_visitor.TreeInterpreter):
    """jmespath's interpreter with a step budget (one instance per evaluation)."""

    def __init__(self, steps: int) -> None:
        super().__init__()
        self._steps = steps

    def _charge(self, steps: int) -> None:
        self._steps -= steps
        if self._steps < 0:
            raise _BudgetExceeded

    def visit(self, node: Any, *args: Any, **kwargs: Any) -> Any:
        self._charge(1)
        return super().visit(node, *args, **kwargs)

    def visit_flatten(self, node: Any, value: Any) -> Any:
        result = super().visit_flatten(node, value)
        if isinstance(result, list):
            self._charge(len(result))
        return result

    def visit_function_expression(self, node: Any, value: Any) -> Any:
        # Argument type checks walk arrays element by element in Python: charge for them.
        args = [self.visit(child, value) for child in node["children"]]
        self._charge(sum(len(arg) for arg in args if isinstance(arg, list | dict)))
        result = _FUNCTION_IMPL.call_function(node["value"], args)
        # Charge for what the function built too: to_string() and join() run in C but
        # are linear in their output (the compile-time estimate bounds a single call).
        if isinstance(result, str):
            self._charge(len(result) // _CHARS_PER_STEP)
        elif isinstance(result, list | dict):
            self._charge(len(result))
        return result


# What evaluation may raise on odd data: JMESPath type errors (a ValueError), Python
# TypeError/OverflowError from functions such as contains() or ceil(), and the budget.
_EVALUATION_ERRORS: Final = (
    _BudgetExceeded,
    ValueError,
    TypeError,
    ArithmeticError,
    LookupError,
    AttributeError,
    RecursionError,
)


def _truthy(value: Any) -> bool:
    """JMESPath truthiness: false, null, "", [] and {} are false; everything else is true."""
    if value is None or value is False:
        return False
    if isinstance(value, str | list | dict | Mapping):
        return len(value) > 0
    return True


@dataclass(frozen=True, slots=True)
class Filter:
    """A compiled JMESPath filter. `Filter(source)` and `Filter.compile(source)` validate."""

    source: str
    _ast: Mapping[str, Any] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_ast", _compile_filter(self.source))

    @classmethod
    def compile(cls, expression: str) -> Filter:
        """Validate and compile; raises `ValidationFailed` saying what is wrong and where."""
        return cls(expression)

    def matches(self, event: Mapping[str, Any]) -> bool:
        """Whether the event passes. Never raises: evaluation errors count as no match."""
        try:
            result = _BoundedInterpreter(MAX_EVAL_STEPS).visit(self._ast, event)
        except _EVALUATION_ERRORS:
            return False
        return _truthy(result)


# =======================================================================================
# Transform
# =======================================================================================


class _Star(enum.Enum):
    """The `*` path segment: every key of an object, every element of an array."""

    STAR = "*"


_STAR: Final = _Star.STAR
_Segment: TypeAlias = str | _Star
_Path: TypeAlias = tuple[_Segment, ...]
_KeyPath: TypeAlias = tuple[str, ...]
# keep: segment -> sub-trie, or None when everything below is kept.
_Trie: TypeAlias = dict[str, "_Trie | None"]

_OPERATIONS: Final = ("rename", "drop", "set", "keep", "redact")
_MISSING: Final[Any] = object()
_SKIP: Final[Any] = object()


def _quote(text: str) -> str:
    """A path or key as it appears in the JSON spec."""
    return json.dumps(text, ensure_ascii=False)


def _parse_path(text: object, where: str, *, wildcard: bool) -> _Path:
    """`a.b\\.c.*` -> ("a", "b.c", STAR). Escapes: `\\.` `\\\\` `\\*`."""
    if not isinstance(text, str):
        raise ValidationFailed(f"{where}: must be a path string, got {_json_type(text)}")
    if not text:
        raise ValidationFailed(f"{where}: path is empty")
    segments: list[_Segment] = []
    current: list[str] = []
    literal_star = False  # the segment contains an escaped `*`
    index = 0
    while True:
        char = text[index] if index < len(text) else None
        if char is None or char == ".":
            if not current:
                raise ValidationFailed(
                    f"{where}: path {_quote(text)} has an empty segment at character {index + 1}"
                )
            segment = "".join(current)
            if segment == "*" and not literal_star:
                if not wildcard:
                    raise ValidationFailed(
                        f"{where}: path {_quote(text)}: the wildcard * is only allowed in drop "
                        "and redact (write \\* for a key named '*')"
                    )
                segments.append(_STAR)
            else:
                segments.append(segment)
            if len(segments) > MAX_PATH_SEGMENTS:
                raise ValidationFailed(
                    f"{where}: path {_quote(text)} has more than {MAX_PATH_SEGMENTS} segments"
                )
            if char is None:
                return tuple(segments)
            current, literal_star = [], False
        elif char == "\\":
            escaped = text[index + 1 : index + 2]
            if escaped not in (".", "\\", "*"):
                shown = repr("\\" + escaped) if escaped else "a trailing backslash"
                raise ValidationFailed(
                    f"{where}: path {_quote(text)} has an invalid escape at character "
                    f"{index + 1} ({shown}); only \\. \\\\ and \\* are allowed"
                )
            literal_star = literal_star or escaped == "*"
            current.append(escaped)
            index += 1
        else:
            current.append(char)
        index += 1


def _key_path(text: object, where: str) -> _KeyPath:
    path = _parse_path(text, where, wildcard=False)
    return tuple(segment for segment in path if isinstance(segment, str))


# -- operations (copy-on-write: each returns its input unchanged, or a new container) --


def _lookup(doc: Any, path: _KeyPath) -> Any:
    current = doc
    for segment in path:
        if not isinstance(current, Mapping) or segment not in current:
            return _MISSING
        current = current[segment]
    return current


def _set_in(value: Any, path: _KeyPath, index: int, new_value: Any) -> Any:
    """`value` with `path[index:]` set; _SKIP if an existing intermediate is no object."""
    if not isinstance(value, Mapping):
        return _SKIP
    segment = path[index]
    if index == len(path) - 1:
        child = new_value
    else:
        existing = value.get(segment, _MISSING)
        if existing is _MISSING:
            child = new_value
            for inner in reversed(path[index + 1 :]):
                child = {inner: child}
        else:
            child = _set_in(existing, path, index + 1, new_value)
            if child is _SKIP:
                return _SKIP
    result = dict(value)
    result[segment] = child
    return result


def _remove(value: Any, path: _Path, index: int, *, redact: bool) -> Any:
    """`value` with `path[index:]` dropped (or redacted); the same object if no match."""
    segment = path[index]
    last = index == len(path) - 1
    if isinstance(value, Mapping):
        if segment is _STAR:
            if last:
                if redact:
                    return {key: REDACTED for key in value}
                return {} if value else value
            items: Iterable[tuple[Any, Any]] = list(value.items())
        elif segment in value:
            items = ((segment, value[segment]),)
        else:
            return value
        result: dict[Any, Any] | None = None
        for key, child in items:
            if last and not redact:
                if result is None:
                    result = dict(value)
                del result[key]
                continue
            new_child = REDACTED if last else _remove(child, path, index + 1, redact=redact)
            if new_child is not child:
                if result is None:
                    result = dict(value)
                result[key] = new_child
        return value if result is None else result
    if isinstance(value, list) and segment is _STAR:
        if last:
            if redact:
                return [REDACTED] * len(value)
            return [] if value else value
        copied: list[Any] | None = None
        for position, child in enumerate(value):
            new_child = _remove(child, path, index + 1, redact=redact)
            if new_child is not child:
                if copied is None:
                    copied = list(value)
                copied[position] = new_child
        return value if copied is None else copied
    return value


def _project(value: Mapping[str, Any], trie: _Trie) -> dict[str, Any]:
    result: dict[str, Any] = {}
    for key, child in value.items():
        sub = trie.get(key, _MISSING)
        if sub is _MISSING:
            continue
        if sub is None:
            result[key] = child
        elif isinstance(child, Mapping):
            projected = _project(child, sub)
            if projected:
                result[key] = projected
    return result


def _build_trie(paths: Iterable[_KeyPath]) -> _Trie:
    root: _Trie = {}
    for path in paths:
        node = root
        for segment in path[:-1]:
            nxt = node.get(segment, _MISSING)
            if nxt is None:  # an ancestor is already kept whole
                break
            if nxt is _MISSING:
                nxt = {}
                node[segment] = nxt
            node = nxt
        else:
            node[path[-1]] = None
    return root


@dataclass(frozen=True, slots=True)
class _SetValue:
    """A `set` value; containers are re-decoded per use so no two events share them."""

    scalar: Any
    encoded: bytes | None

    def fresh(self) -> Any:
        return self.scalar if self.encoded is None else msgspec.json.decode(self.encoded)


@dataclass(frozen=True, slots=True)
class _Program:
    rename: tuple[tuple[_KeyPath, _KeyPath], ...]
    drop: tuple[_Path, ...]
    set: tuple[tuple[_KeyPath, _SetValue], ...]
    keep: _Trie | None
    redact: tuple[_Path, ...]


# -- spec parsing -----------------------------------------------------------------------


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"number {text} is out of range")
    return value


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    result: dict[str, Any] = {}
    for key, value in pairs:
        if key in result:
            raise ValueError(f"duplicate key {key!r}")
        result[key] = value
    return result


def _mapping_to_dict(value: Any) -> Any:
    if isinstance(value, Mapping):
        return dict(value)
    raise TypeError(f"{type(value).__name__} is not JSON")


def _dumps(value: Any) -> str:
    return json.dumps(
        value,
        ensure_ascii=False,
        separators=(",", ":"),
        allow_nan=False,
        default=_mapping_to_dict,
    )


def _loads(text: str) -> Any:
    return json.loads(
        text,
        parse_constant=_reject_constant,
        parse_float=_finite_float,
        object_pairs_hook=_no_duplicates,
    )


def _parse_spec_text(text: str) -> Any:
    size = len(text.encode("utf-8", "surrogatepass"))
    if size > _MAX_SPEC_TEXT_BYTES:
        raise ValidationFailed(
            f"transform: spec text is {size} bytes; the limit is {MAX_SPEC_BYTES} bytes "
            "of compact JSON"
        )
    try:
        return _loads(text)
    except json.JSONDecodeError as error:
        raise ValidationFailed(
            f"transform: invalid JSON at line {error.lineno} column {error.colno}: {error.msg}"
        ) from None
    except (ValueError, RecursionError) as error:
        reason = "nested too deeply" if isinstance(error, RecursionError) else str(error)
        raise ValidationFailed(f"transform: invalid JSON: {reason}") from None


def _canonical(spec: Any) -> tuple[str, dict[str, Any]]:
    """Compact JSON text of the spec, and the spec parsed back from it."""
    if not isinstance(spec, Mapping):
        raise ValidationFailed(f"transform: spec must be a JSON object, got {_json_type(spec)}")
    try:
        text = _dumps(spec)
    except (TypeError, ValueError, RecursionError) as error:
        reason = "nested too deeply" if isinstance(error, RecursionError) else str(error)
        raise ValidationFailed(f"transform: spec is not valid JSON: {reason}") from None
    size = len(text.encode("utf-8", "surrogatepass"))
    if size > MAX_SPEC_BYTES:
        raise ValidationFailed(
            f"transform: spec is {size} bytes of compact JSON; the limit is {MAX_SPEC_BYTES}"
        )
    try:
        parsed = _loads(text)
    except (ValueError, RecursionError) as error:  # e.g. keys that collide once stringified
        reason = "nested too deeply" if isinstance(error, RecursionError) else str(error)
        raise ValidationFailed(f"transform: spec is not valid JSON: {reason}") from None
    return text, parsed


def _compile_set_value(value: Any, where: str) -> _SetValue:
    encoded = _dumps(value).encode("utf-8", "surrogatepass")
    if len(encoded) > MAX_SET_VALUE_BYTES:
        raise ValidationFailed(
            f"{where}: value is {len(encoded)} bytes of JSON; the limit is {MAX_SET_VALUE_BYTES}"
        )
    if _json_depth(value) > MAX_SET_VALUE_NESTING:
        raise ValidationFailed(
            f"{where}: value nests more than {MAX_SET_VALUE_NESTING} levels deep"
        )
    if isinstance(value, dict | list):
        return _SetValue(None, encoded)
    return _SetValue(value, None)


def _compile_spec(spec: Mapping[str, Any]) -> _Program:
    unknown = [key for key in spec if key not in _OPERATIONS]
    if unknown:
        raise ValidationFailed(
            f"transform: unknown key {unknown[0]!r}; allowed keys are {', '.join(_OPERATIONS)}"
        )
    count = 0
    for key in _OPERATIONS:
        entries = spec.get(key)
        if key in ("rename", "set"):
            if entries is not None and not isinstance(entries, Mapping):
                raise ValidationFailed(
                    f"transform.{key}: must be an object of path -> "
                    f"{'path' if key == 'rename' else 'value'}, got {_json_type(entries)}"
                )
        elif entries is not None and not isinstance(entries, list):
            raise ValidationFailed(
                f"transform.{key}: must be an array of path strings, got {_json_type(entries)}"
            )
        count += len(entries) if entries is not None else 0
    if count > MAX_OPERATIONS:
        raise ValidationFailed(
            f"transform: spec has {count} operations; the limit is {MAX_OPERATIONS}"
        )
    if "keep" in spec and not spec["keep"]:
        raise ValidationFailed(
            "transform.keep: must list at least one path (omit keep to keep everything)"
        )

    rename = tuple(
        (
            _key_path(source, f"transform.rename[{_quote(source)}]"),
            _key_path(target, f"transform.rename[{_quote(source)}] (target)"),
        )
        for source, target in spec.get("rename", {}).items()
    )
    drop = tuple(
        _parse_path(path, f"transform.drop[{i}]", wildcard=True)
        for i, path in enumerate(spec.get("drop", []))
    )
    set_ops = tuple(
        (
            _key_path(path, f"transform.set[{_quote(path)}]"),
            _compile_set_value(value, f"transform.set[{_quote(path)}]"),
        )
        for path, value in spec.get("set", {}).items()
    )
    keep = (
        _build_trie(_key_path(path, f"transform.keep[{i}]") for i, path in enumerate(spec["keep"]))
        if "keep" in spec
        else None
    )
    redact = tuple(
        _parse_path(path, f"transform.redact[{i}]", wildcard=True)
        for i, path in enumerate(spec.get("redact", []))
    )
    return _Program(rename=rename, drop=drop, set=set_ops, keep=keep, redact=redact)


def _freeze(value: Any) -> Any:
    """Read-only views of the parsed spec (mappings only; it is never mutated anyway)."""
    if isinstance(value, dict):
        return MappingProxyType({key: _freeze(child) for key, child in value.items()})
    if isinstance(value, list):
        return tuple(_freeze(child) for child in value)
    return value


@dataclass(frozen=True, slots=True)
class Transform:
    """A compiled transform. Two transforms are equal when their canonical JSON is."""

    spec: Mapping[str, Any] = field(compare=False)
    _json: str = field(init=False, repr=False)
    _program: _Program = field(init=False, repr=False, compare=False)

    def __repr__(self) -> str:
        return f"Transform({self._json})"

    def __post_init__(self) -> None:
        text, parsed = _canonical(self.spec)
        program = _compile_spec(parsed)
        object.__setattr__(self, "spec", _freeze(parsed))
        object.__setattr__(self, "_json", text)
        object.__setattr__(self, "_program", program)

    @classmethod
    def compile(cls, spec: Mapping[str, Any] | str) -> Transform:
        """Validate and compile a spec (a mapping, or its JSON text)."""
        parsed = _parse_spec_text(spec) if isinstance(spec, str) else spec
        return cls(parsed)

    def to_json(self) -> str:
        """Compact JSON for storage; `Transform.compile(t.to_json()) == t`."""
        return self._json

    def apply(self, event: Mapping[str, Any]) -> dict[str, Any]:
        """A new dict: rename, drop, set, keep, redact, in that order.

        The input is never mutated. The result shares the nested values that no
        operation touched with the input; copy it before mutating it in place.
        """
        program = self._program
        doc: Any = event
        for source, target in program.rename:
            value = _lookup(doc, source)
            if value is _MISSING or source == target:
                continue
            moved = _set_in(_remove(doc, source, 0, redact=False), target, 0, value)
            if moved is not _SKIP:
                doc = moved
        for path in program.drop:
            doc = _remove(doc, path, 0, redact=False)
        for key_path, set_value in program.set:
            updated = _set_in(doc, key_path, 0, set_value.fresh())
            if updated is not _SKIP:
                doc = updated
        if program.keep is not None:
            doc = _project(doc, program.keep)
        for path in program.redact:
            doc = _remove(doc, path, 0, redact=True)
        if doc is event or not isinstance(doc, dict):
            return dict(doc)
        return doc
