"""The KPI formula language: parse, validate, check units and cycles, and evaluate over periods.

Analysts write formulas such as ``(revenue - cogs) / revenue`` or ``dso + dio - dpo`` over measure and
KPI codes. This module is pure: it needs no database, only lark (the grammar), numpy and pandas.

- :func:`parse` turns text into an immutable :class:`Formula` (a tree of frozen dataclasses) using a
  LALR grammar. Nothing is ever handed to ``eval``, ``pandas.eval`` or a template engine.
  ``str(formula)`` is a canonical form, and ``parse(str(f)) == f`` for every formula.
- :func:`validate` refuses unknown names (with a "did you mean") and unit mismatches;
  :func:`infer_unit` works out the unit of the result.
- :func:`find_cycle` and :func:`evaluation_order` order KPIs that refer to other KPIs.
- :func:`evaluate` computes a formula for every period of a frame at once, vectorised with numpy.
  An empty value (division by zero, a missing input, not enough history) is NaN with a reason;
  evaluation never raises because of the data. :func:`evaluate_in_order` evaluates several
  formulas over one frame, each result a column for the next ones.

The analyst-facing reference, with the exact period semantics, is ``docs/formula-language.md``.

Numbers: literals are kept as ``Decimal`` in the tree (so the canonical text is exact), but
evaluation runs in float64. Money is exact ``Decimal`` up to the measures; a KPI value is a ratio or
an amount computed from them, and the caller converts it back (``EvalResult.as_decimals``) when it
stores or shows it. float64 carries 15-16 significant digits, far more than any KPI is shown with.
"""

from __future__ import annotations

import difflib
import keyword
import re
import unicodedata
import weakref
from collections.abc import Callable, Collection, Hashable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from decimal import ROUND_HALF_UP, Context, Decimal
from functools import cached_property
from typing import Any, Literal

import numpy as np
import pandas as pd
from lark import Lark, Token, Transformer
from lark.exceptions import UnexpectedCharacters, UnexpectedInput, UnexpectedToken

# ---------------------------------------------------------------------------------------------
# Limits. Each is refused with a clear message before it can cost time or memory.
# ---------------------------------------------------------------------------------------------

MAX_LENGTH = 2_000  # characters of formula text; checked before anything else
MAX_DEPTH = 50  # levels of nesting (parentheses, calls, operators inside one another)
MAX_NODES = 500  # numbers, names, calls and operations in one formula
MAX_NAME_LENGTH = 64
MAX_DIGITS = 30  # digits in one numeric literal
MAX_EXPONENT = 12  # |exponent| of ^
MAX_ROUND_DIGITS = 12  # |places| of round(x, places)

# function name -> (fewest arguments, most arguments or None for "any number", how to call it)
FUNCTIONS: dict[str, tuple[int, int | None, str]] = {
    "if": (3, 3, "if(condition, value if true, value if false)"),
    "min": (2, None, "min(a, b, ...)"),
    "max": (2, None, "max(a, b, ...)"),
    "abs": (1, 1, "abs(x)"),
    "round": (1, 2, "round(x) or round(x, places)"),
    "prev": (1, 1, "prev(x)"),
    "last_year": (1, 1, "last_year(x)"),
    "ytd": (1, 1, "ytd(x)"),
    "ttm": (1, 1, "ttm(x)"),
    "avg_balance": (1, 1, "avg_balance(x)"),
    "days": (0, 0, "days()"),
}
PERIOD_FUNCTIONS = frozenset({"prev", "last_year", "ytd", "ttm", "avg_balance", "days"})
WINDOW_FUNCTIONS = frozenset({"ytd", "ttm"})

# Python's keywords (lambda, import, class, ...) can never be names, so a formula can't even look
# like code. Function names are reserved too: `days` alone is a mistake for `days()`.
RESERVED_WORDS = frozenset(word for word in keyword.kwlist if word.islower())
NAME_PATTERN = re.compile(r"[a-z_][a-z0-9_]*")

Grain = Literal["month", "quarter", "year"]
GRAINS: tuple[str, ...] = ("month", "quarter", "year")
TimeBehaviour = Literal["flow", "balance"]
CompareOp = Literal["<", "<=", ">", ">=", "==", "!="]


# ---------------------------------------------------------------------------------------------
# Errors
# ---------------------------------------------------------------------------------------------


class FormulaError(ValueError):
    """A formula that can't be accepted, with where and why.

    ``message`` is the full human message (``"Unknown function 'foo' at column 5"``);
    ``position`` is the 0-based character offset in the formula text (None when the problem is not
    at one place); ``line`` and ``column`` are 1-based. ``summary`` and ``hint`` are the parts
    before and after the location.
    """

    def __init__(
        self,
        summary: str,
        *,
        position: int | None = None,
        text: str | None = None,
        hint: str | None = None,
        message: str | None = None,
    ) -> None:
        self.summary = summary
        self.hint = hint
        self.position = position if position is not None and position >= 0 else None
        self.text = text
        self.line: int | None = None
        self.column: int | None = None
        where = ""
        if self.position is not None:
            self.line, self.column = _line_column(text or "", self.position)
            where = " at " + _where(text or "", self.position)
        self.message = message or (summary + where + (f": {hint}" if hint else ""))
        super().__init__(self.message)

    def located(self, text: str) -> FormulaError:
        """The same error, with line and column computed against ``text``."""
        return FormulaError(self.summary, position=self.position, text=text, hint=self.hint)


class CycleError(FormulaError):
    """KPI definitions that refer to each other in a loop; ``cycle`` is the path, e.g. [a, b, a]."""

    def __init__(self, cycle: list[str], definitions: Mapping[str, Formula]) -> None:
        self.cycle = cycle
        first, second = cycle[0], cycle[1]
        formula = definitions[first]
        position = _first_positions(formula.root).get(second)
        super().__init__(
            f"KPI formulas form a cycle: {' -> '.join(cycle)}", position=position, text=formula.text
        )
        if self.column is not None:
            self.message = (
                f"{self.summary} ('{first}' refers to '{second}' at column {self.column} of its formula)"
            )
            self.args = (self.message,)


# ---------------------------------------------------------------------------------------------
# The tree. Frozen dataclasses; positions are carried for messages but ignored by ==, so a
# formula equals its re-parsed canonical form.
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Node:
    position: int = field(default=-1, compare=False, repr=False, kw_only=True)


@dataclass(frozen=True)
class Number(Node):
    value: Decimal


@dataclass(frozen=True)
class Name(Node):
    name: str


@dataclass(frozen=True)
class Call(Node):
    function: str
    args: tuple[Expr, ...] = ()


@dataclass(frozen=True)
class Unary(Node):
    op: Literal["-", "not"]
    operand: Expr


@dataclass(frozen=True)
class Compare(Node):
    op: CompareOp
    left: Expr
    right: Expr
    op_position: int = field(default=-1, compare=False, repr=False, kw_only=True)


@dataclass(frozen=True)
class Power(Node):
    base: Expr
    exponent: Expr
    op_position: int = field(default=-1, compare=False, repr=False, kw_only=True)


_COMPARE_OPS: dict[str, CompareOp] = {"<": "<", "<=": "<=", ">": ">", ">=": ">=", "==": "==", "!=": "!="}
_CHAIN_LEVELS: dict[str, int] = {"or": 1, "and": 2, "+": 5, "-": 5, "*": 6, "/": 6}


@dataclass(frozen=True)
class Chain(Node):
    """Operands joined, left to right, by operators of one precedence level.

    ``a - b + c`` is one Chain (ops ``("-", "+")``), not a nested tree, so a long sum is not "deep".
    A same-level chain as the first operand is merged in (``(a + b) + c`` is ``a + b + c``: same
    value, same evaluation order); elsewhere parentheses are kept (``a - (b + c)``).
    """

    operands: tuple[Expr, ...]
    ops: tuple[str, ...]
    op_positions: tuple[int, ...] = field(default=(), compare=False, repr=False, kw_only=True)

    def __post_init__(self) -> None:
        if not self.ops or len(self.operands) != len(self.ops) + 1:
            raise ValueError("a Chain needs n operands and n - 1 operators")
        levels = {_CHAIN_LEVELS.get(op) for op in self.ops}
        if len(levels) != 1 or None in levels:
            raise ValueError(f"a Chain's operators must be of one level, got {self.ops}")
        positions = self.op_positions if len(self.op_positions) == len(self.ops) else (-1,) * len(self.ops)
        first = self.operands[0]
        if isinstance(first, Chain) and first.level == self.level:
            object.__setattr__(self, "operands", first.operands + self.operands[1:])
            object.__setattr__(self, "ops", first.ops + self.ops)
            positions = first.op_positions + positions
        object.__setattr__(self, "op_positions", positions)

    @property
    def level(self) -> int:
        return _CHAIN_LEVELS[self.ops[0]]


Expr = Number | Name | Call | Unary | Compare | Power | Chain


def _children(node: Expr) -> tuple[Expr, ...]:
    match node:
        case Call(args=args):
            return args
        case Unary(operand=operand):
            return (operand,)
        case Compare(left=left, right=right):
            return (left, right)
        case Power(base=base, exponent=exponent):
            return (base, exponent)
        case Chain(operands=operands):
            return operands
    return ()


def _walk(root: Expr) -> Iterator[tuple[Expr, int]]:
    """Every node with its depth (root = 1), in source order. Iterative: safe on any tree."""
    stack: list[tuple[Expr, int]] = [(root, 1)]
    while stack:
        node, depth = stack.pop()
        yield node, depth
        stack.extend((child, depth + 1) for child in reversed(_children(node)))


def _first_positions(root: Expr) -> dict[str, int]:
    """Each name referenced, with the position of its first occurrence."""
    found: dict[str, int] = {}
    for node, _depth in _walk(root):
        if isinstance(node, Name) and node.name not in found:
            found[node.name] = node.position
    return found


# ---------------------------------------------------------------------------------------------
# Canonical text
# ---------------------------------------------------------------------------------------------

# Precedence levels, loosest first. An operand whose level is below what its place needs is
# wrapped in parentheses.
_OR, _AND, _NOT, _COMPARE, _SUM, _PRODUCT, _NEG, _POWER, _ATOM = range(1, 10)


def _level(node: Expr) -> int:
    match node:
        case Chain():
            return node.level
        case Unary(op="not"):
            return _NOT
        case Unary():
            return _NEG
        case Compare():
            return _COMPARE
        case Power():
            return _POWER
    return _ATOM


def format_number(value: Decimal) -> str:
    """Canonical text of a literal: plain digits, no exponent, no trailing zeros (1.50 -> 1.5)."""
    text = format(value.normalize(Context(prec=MAX_DIGITS + 10)), "f")
    return "0" if text in ("-0", "") else text


def _render(node: Expr) -> str:
    match node:
        case Number(value=value):
            return format_number(value)
        case Name(name=name):
            return name
        case Call(function=function, args=args):
            return f"{function}({', '.join(_render(arg) for arg in args)})"
        case Unary(op="not", operand=operand):
            return f"not {_wrap(operand, _NOT)}"
        case Unary(operand=operand):
            return f"-{_wrap(operand, _NEG)}"
        case Compare(op=op, left=left, right=right):
            return f"{_wrap(left, _SUM)} {op} {_wrap(right, _SUM)}"
        case Power(base=base, exponent=exponent):
            return f"{_wrap(base, _ATOM)} ^ {_wrap(exponent, _NEG)}"
        case Chain(operands=operands, ops=ops):
            # Every operand must bind tighter than the chain itself; a same-level chain inside
            # keeps its parentheses (a - (b - c)).
            parts = [_wrap(operands[0], node.level + 1)]
            for op, operand in zip(ops, operands[1:], strict=True):
                parts.append(f"{op} {_wrap(operand, node.level + 1)}")
            return " ".join(parts)
    raise TypeError(f"not a formula node: {node!r}")


def _wrap(node: Expr, needed: int) -> str:
    text = _render(node)
    return text if _level(node) >= needed else f"({text})"


def _short(node: Expr, limit: int = 60) -> str:
    text = _render(node)
    return text if len(text) <= limit else text[: limit - 3] + "..."


# ---------------------------------------------------------------------------------------------
# Structure rules: the checks that make a tree a formula (known functions, arity, limits).
# ---------------------------------------------------------------------------------------------


def _literal_value(node: Expr) -> Decimal | None:
    """The value of a plain number or a negated plain number, else None."""
    if isinstance(node, Number):
        return node.value
    if isinstance(node, Unary) and node.op == "-" and isinstance(node.operand, Number):
        return -node.operand.value
    return None


def _arity_text(low: int, high: int | None) -> str:
    if high == 0:
        return "no arguments"
    if high is None:
        return f"at least {low} arguments"
    if low == high:
        return f"{low} argument" + ("s" if low != 1 else "")
    return f"{low} or {high} arguments" if high == low + 1 else f"{low} to {high} arguments"


def _check_node(node: Expr) -> None:
    """Rules about one node on its own (the parser applies them as it builds the tree)."""
    match node:
        case Number(value=value):
            if not isinstance(value, Decimal) or not value.is_finite() or value < 0:
                raise FormulaError("Numbers must be plain non-negative literals", position=node.position)
            digits = len(format_number(value).replace(".", ""))
            if digits > MAX_DIGITS:
                raise FormulaError(
                    f"Number is too long ({digits} digits)",
                    position=node.position,
                    hint=f"numbers have at most {MAX_DIGITS} digits",
                )
        case Name(name=name):
            _check_name(name, node.position)
        case Call(function=function, args=args):
            if function not in FUNCTIONS:
                close = difflib.get_close_matches(function, FUNCTIONS, n=1)
                raise FormulaError(
                    f"Unknown function '{function}'",
                    position=node.position,
                    hint=f"did you mean {close[0]}()?" if close else "the functions are " + _function_list(),
                )
            low, high, usage = FUNCTIONS[function]
            if len(args) < low or (high is not None and len(args) > high):
                raise FormulaError(
                    f"Wrong number of arguments for {function}()",
                    position=node.position,
                    hint=f"it takes {_arity_text(low, high)}, got {len(args)}; write {usage}",
                )
            if function == "round" and len(args) == 2:
                places = _literal_value(args[1])
                if places is None or places != places.to_integral_value() or abs(places) > MAX_ROUND_DIGITS:
                    raise FormulaError(
                        "The places of round() must be a whole number between "
                        f"-{MAX_ROUND_DIGITS} and {MAX_ROUND_DIGITS}",
                        position=args[1].position,
                        hint="for example round(x, 2)",
                    )
        case Power(exponent=exponent):
            power = _literal_value(exponent)
            if power is None:
                raise FormulaError(
                    f"The exponent of ^ must be a plain number between -{MAX_EXPONENT} and {MAX_EXPONENT}",
                    position=node.op_position,
                    hint="for example x ^ 2 or (1 + growth) ^ 4",
                )
            if abs(power) > MAX_EXPONENT:
                raise FormulaError(
                    f"Exponent {'-' if power < 0 else ''}{format_number(abs(power))} is too large",
                    position=node.op_position,
                    hint=f"exponents must be between -{MAX_EXPONENT} and {MAX_EXPONENT}",
                )
        case Unary(op=op):
            if op not in ("-", "not"):
                raise ValueError(f"unknown unary operator {op!r}")
        case Compare(op=op):
            if op not in ("<", "<=", ">", ">=", "==", "!="):
                raise ValueError(f"unknown comparison {op!r}")


def _function_list() -> str:
    return ", ".join(f"{name}()" for name in FUNCTIONS)


def _check_name(name: str, position: int) -> None:
    if not isinstance(name, str) or not NAME_PATTERN.fullmatch(name):
        raise FormulaError(
            f"Invalid name {name!r}", position=position, hint="names are lower-case a-z, 0-9 and _"
        )
    if len(name) > MAX_NAME_LENGTH:
        raise FormulaError(
            f"Name is too long ({len(name)} characters)",
            position=position,
            hint=f"names have at most {MAX_NAME_LENGTH} characters",
        )
    if name in FUNCTIONS:
        usage = FUNCTIONS[name][2]
        raise FormulaError(f"'{name}' is a function", position=position, hint=f"call it as {usage}")
    if name in RESERVED_WORDS:
        raise FormulaError(f"'{name}' is a reserved word and cannot be used as a name", position=position)
    if name.startswith("__"):
        raise FormulaError(f"Invalid name '{name}'", position=position, hint="names cannot start with '__'")


def _check_structure(root: Expr) -> None:
    """All rules for a whole tree, iteratively (a hand-built tree may be arbitrarily deep)."""
    # Each stack entry carries the window function (ytd or ttm) the node is inside, if any.
    stack: list[tuple[Expr, int, str | None]] = [(root, 1, None)]
    count = 0
    while stack:
        node, depth, window = stack.pop()
        if not isinstance(node, Number | Name | Call | Unary | Compare | Power | Chain):
            raise TypeError(f"not a formula node: {node!r}")
        count += 1
        if count > MAX_NODES:
            raise _too_many_nodes(node.position)
        if depth > MAX_DEPTH:
            raise _too_deep(node.position)
        _check_node(node)
        if isinstance(node, Call) and node.function in WINDOW_FUNCTIONS:
            if window is not None and window != node.function:
                raise FormulaError(
                    f"{node.function}() cannot be used inside {window}()",
                    position=node.position,
                    hint="year to date and trailing twelve months are different windows; use one",
                )
            window = node.function
        stack.extend((child, depth + 1, window) for child in reversed(_children(node)))


def _too_deep(position: int) -> FormulaError:
    return FormulaError(
        f"Formula is nested too deeply (more than {MAX_DEPTH} levels)",
        position=position,
        hint="split it into smaller KPIs",
    )


def _too_many_nodes(position: int) -> FormulaError:
    return FormulaError(
        f"Formula is too large (more than {MAX_NODES} numbers, names and operations)",
        position=position,
        hint="split it into smaller KPIs",
    )


# ---------------------------------------------------------------------------------------------
# Formula
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Formula:
    """A parsed formula. Always structurally valid: constructing one checks the tree.

    Two formulas are equal when their trees are equal (positions and source text are ignored).
    ``str()`` is the canonical text; ``text`` is what the analyst typed (positions refer to it).
    """

    root: Expr
    text: str | None = field(default=None, compare=False, repr=False)

    def __post_init__(self) -> None:
        try:
            _check_structure(self.root)
        except FormulaError as error:
            raise error.located(self.text or "") from None

    def __str__(self) -> str:
        return _render(self.root)

    @cached_property
    def names(self) -> frozenset[str]:
        """Every measure or KPI code referenced."""
        return frozenset(_first_positions(self.root))

    @cached_property
    def functions(self) -> frozenset[str]:
        """Every function called."""
        return frozenset(node.function for node, _ in _walk(self.root) if isinstance(node, Call))

    def name_positions(self) -> dict[str, int]:
        """Each name with the position of its first occurrence in ``text`` (-1 when unknown)."""
        return _first_positions(self.root)


# ---------------------------------------------------------------------------------------------
# Parsing
# ---------------------------------------------------------------------------------------------

# Precedence, loosest first: or < and < not < comparisons < + - < * / < unary - < ^ < atoms.
# Comparisons don't chain (a < b < c is an error). ^ is right-associative and binds tighter than
# a leading minus: -2 ^ 2 is -(2 ^ 2).
_GRAMMAR = r"""
?start: or_expr
?or_expr: and_expr (OR and_expr)*
?and_expr: not_expr (AND not_expr)*
?not_expr: NOT not_expr -> not_op
         | comparison
?comparison: sum_expr (COMP_OP sum_expr)?
?sum_expr: product_expr ((PLUS | MINUS) product_expr)*
?product_expr: unary ((STAR | SLASH) unary)*
?unary: MINUS unary -> neg
      | power
?power: atom (CARET unary)?
?atom: NUMBER -> number
     | NAME -> name
     | NAME LPAR [or_expr (COMMA or_expr)*] RPAR -> call
     | LPAR or_expr RPAR -> group

OR: "or"
AND: "and"
NOT: "not"
COMP_OP: "<=" | ">=" | "==" | "!=" | "<" | ">"
PLUS: "+"
MINUS: "-"
STAR: "*"
SLASH: "/"
CARET: "^"
LPAR: "("
RPAR: ")"
COMMA: ","
NUMBER: /[0-9]+(\.[0-9]+)?/
NAME: /[a-z_][a-z0-9_]*/
WS: /[ \t\r\n]+/
%ignore WS
"""


@dataclass(frozen=True, slots=True)
class _Built:
    """A node under construction, with its depth and size so limits apply as the parser goes."""

    node: Expr
    depth: int
    size: int


def _built(node: Expr, children: list[_Built]) -> _Built:
    _check_node(node)
    depth = 1 + max((child.depth for child in children), default=0)
    size = 1 + sum(child.size for child in children)
    if depth > MAX_DEPTH:
        raise _too_deep(node.position)
    if size > MAX_NODES:
        raise _too_many_nodes(node.position)
    return _Built(node, depth, size)


class _Builder(Transformer[Token, _Built]):
    """Builds the tree while the LALR parser reduces (no recursion, so depth can't blow the stack).

    Stateless, so one parser can serve every thread.
    """

    def number(self, children: list[Token]) -> _Built:
        token = children[0]
        digits = len(token.value.replace(".", ""))
        if digits > MAX_DIGITS:
            raise FormulaError(
                f"Number is too long ({digits} digits)",
                position=token.start_pos,
                hint=f"numbers have at most {MAX_DIGITS} digits",
            )
        return _built(Number(Decimal(token.value), position=token.start_pos), [])

    def name(self, children: list[Token]) -> _Built:
        token = children[0]
        return _built(Name(token.value, position=token.start_pos), [])

    def call(self, children: list[Any]) -> _Built:
        token: Token = children[0]
        args = [child for child in children if isinstance(child, _Built)]
        node = Call(token.value, tuple(arg.node for arg in args), position=token.start_pos)
        return _built(node, args)

    def group(self, children: list[Any]) -> _Built:
        return children[1]  # the expression between the parentheses; they add nothing

    def neg(self, children: list[Any]) -> _Built:
        return self._unary("-", children)

    def not_op(self, children: list[Any]) -> _Built:
        return self._unary("not", children)

    def _unary(self, op: Literal["-", "not"], children: list[Any]) -> _Built:
        token: Token = children[0]
        operand: _Built = children[1]
        return _built(Unary(op, operand.node, position=token.start_pos), [operand])

    def comparison(self, children: list[Any]) -> _Built:
        left: _Built = children[0]
        op: Token = children[1]
        right: _Built = children[2]
        node = Compare(
            _COMPARE_OPS[op.value],
            left.node,
            right.node,
            position=left.node.position,
            op_position=op.start_pos,
        )
        return _built(node, [left, right])

    def power(self, children: list[Any]) -> _Built:
        base: _Built = children[0]
        caret: Token = children[1]
        exponent: _Built = children[2]
        node = Power(base.node, exponent.node, position=base.node.position, op_position=caret.start_pos)
        return _built(node, [base, exponent])

    def _chain(self, children: list[Any]) -> _Built:
        operands = [child for child in children if isinstance(child, _Built)]
        tokens = [child for child in children if isinstance(child, Token)]
        node = Chain(
            tuple(operand.node for operand in operands),
            tuple(token.value for token in tokens),
            position=operands[0].node.position,
            op_positions=tuple(token.start_pos for token in tokens),
        )
        first = operands[0]
        if isinstance(first.node, Chain) and first.node.level == node.level:
            # (a + b) + c was merged into one chain: no new level, no new node.
            _check_node(node)
            depth = max(first.depth, 1 + max(operand.depth for operand in operands[1:]))
            size = first.size + sum(operand.size for operand in operands[1:])
            if depth > MAX_DEPTH:
                raise _too_deep(node.position)
            if size > MAX_NODES:
                raise _too_many_nodes(node.position)
            return _Built(node, depth, size)
        return _built(node, operands)

    # The four left-associative levels all become a Chain.
    or_expr = and_expr = sum_expr = product_expr = _chain


_PARSER = Lark(_GRAMMAR, parser="lalr", lexer="basic", transformer=_Builder(), maybe_placeholders=True)


def parse(text: str) -> Formula:
    """Parse formula text into a :class:`Formula`, or raise :class:`FormulaError` saying where."""
    if not isinstance(text, str):
        raise FormulaError(f"A formula must be text, not {type(text).__name__}")
    # Length first, so a huge input costs nothing more.
    if len(text) > MAX_LENGTH:
        raise FormulaError(f"Formula is too long: {len(text):,} characters (the limit is {MAX_LENGTH:,})")
    if not text.strip():
        raise FormulaError("Formula is empty")
    depth = 0
    for position, char in enumerate(text):
        if char == "(":
            depth += 1
            if depth > MAX_DEPTH:
                raise FormulaError(
                    f"Too many nested parentheses (more than {MAX_DEPTH} levels)",
                    position=position,
                    text=text,
                )
        elif char == ")":
            depth -= 1
    try:
        built: _Built = _PARSER.parse(text)  # type: ignore[assignment] # the transformer's result
    except FormulaError as error:
        raise error.located(text) from None
    except UnexpectedInput as error:
        raise _syntax_error(error, text) from None
    return Formula(built.node, text)


# -- syntax error messages --

_OPERATOR_TOKENS = frozenset({"PLUS", "MINUS", "STAR", "SLASH", "CARET", "COMP_OP", "AND", "OR"})
_CHAR_HINTS: dict[str, str] = {
    "[": "indexing with [ ] is not supported",
    "]": "indexing with [ ] is not supported",
    "{": "braces are not supported; use ( )",
    "}": "braces are not supported; use ( )",
    ";": "a formula is a single expression",
    "=": "use == to compare",
    "!": "use 'not' for negation and != for 'not equal'",
    "&": "use 'and'",
    "|": "use 'or'",
    "%": "percent signs are not supported; divide by 100",
    "#": "comments are not supported",
    "\\": "backslashes are not supported",
    "@": "'@' is not supported",
    ":": "':' is not supported",
    "$": "currency signs are not supported; write plain numbers",
    "?": "use if(condition, value if true, value if false)",
    "\u2212": "use the plain minus sign '-'",
    "\u2013": "use the plain minus sign '-'",
    "\u2014": "use the plain minus sign '-'",
    "\u00d7": "use '*' to multiply",
    "\u00f7": "use '/' to divide",
    "\u2264": "use '<='",
    "\u2265": "use '>='",
    "\u2260": "use '!='",
    "\u00a0": "use an ordinary space",
}


def _syntax_error(error: UnexpectedInput, text: str) -> FormulaError:
    if isinstance(error, UnexpectedCharacters):
        return _bad_character(text, error.pos_in_stream)
    if isinstance(error, UnexpectedToken):
        token = error.token
        try:
            expected = set(error.interactive_parser.accepts())
        except Exception:  # noqa: BLE001 - fall back to lark's (less precise) expectation
            expected = set(error.expected)
        if token.type == "$END":
            position = len(text.rstrip())
            hint = _expected_text(expected)
            unclosed = _unclosed_paren(text)
            if unclosed is not None and "RPAR" in expected:
                hint += f" (the '(' at {_where(text, unclosed)} is not closed)"
            return FormulaError("Unexpected end of formula", position=position, text=text, hint=hint)
        position = token.start_pos if token.start_pos is not None else 0
        if token.type == "STAR" and position > 0 and text[position - 1] == "*":
            return FormulaError(
                "'**' is not supported",
                position=position - 1,
                text=text,
                hint=f"use ^ with an exponent between -{MAX_EXPONENT} and {MAX_EXPONENT} (x ^ 2), "
                "or multiply (x * x)",
            )
        if token.type == "COMP_OP" and "COMP_OP" not in expected:
            return FormulaError(
                f"Unexpected '{token.value}'",
                position=position,
                text=text,
                hint="comparisons cannot be chained; combine them with 'and' (a < b and b < c)",
            )
        if token.type == "NAME":
            shown = f"name '{token.value}'"
        elif token.type == "NUMBER":
            shown = f"number '{token.value}'"
        else:
            shown = f"'{token.value}'"
        return FormulaError(
            f"Unexpected {shown}", position=position, text=text, hint=_expected_text(expected)
        )
    return FormulaError("Invalid formula", position=getattr(error, "pos_in_stream", None), text=text)


def _expected_text(expected: set[str]) -> str:
    if expected & {"NUMBER", "NAME"}:
        return "expected a number, a name or '('"
    parts: list[str] = []
    if expected & _OPERATOR_TOKENS:
        parts.append("an operator")
    if "COMMA" in expected:
        parts.append("','")
    if "RPAR" in expected:
        parts.append("')'")
    if "$END" in expected:
        parts.append("the end of the formula")
    if not parts:
        return "the formula is incomplete"
    listed = parts[0] if len(parts) == 1 else ", ".join(parts[:-1]) + " or " + parts[-1]
    return "expected " + listed


def _bad_character(text: str, position: int) -> FormulaError:
    char = text[position]
    if char in "\"'`":
        return FormulaError(
            "Quotes are not allowed",
            position=position,
            text=text,
            hint="formulas work on numbers and names only, not text",
        )
    if char == ".":
        run = re.search(r"[A-Za-z0-9_]*$", text[:position])
        after_name = run is not None and bool(run.group()) and not run.group()[0].isdigit()
        hint = "names cannot contain '.'" if after_name else "write decimal numbers like 0.5"
        return FormulaError("Unexpected '.'", position=position, text=text, hint=hint)
    if "A" <= char <= "Z":
        start, end = position, position
        while start > 0 and (
            text[start - 1].isascii() and (text[start - 1].isalnum() or text[start - 1] == "_")
        ):
            start -= 1
        while end < len(text) and text[end].isascii() and (text[end].isalnum() or text[end] == "_"):
            end += 1
        word = text[start:end]
        return FormulaError(
            f"Upper-case name '{word}'",
            position=start,
            text=text,
            hint=f"names are lower case: write '{word.lower()}'",
        )
    if char in _CHAR_HINTS:
        shown = f"U+{ord(char):04X}" if not char.isprintable() or char.isspace() else f"'{char}'"
        return FormulaError(f"Unexpected {shown}", position=position, text=text, hint=_CHAR_HINTS[char])
    if not char.isascii() or not char.isprintable():
        # Invisible characters are shown by code only, so the message itself stays readable.
        code = f"U+{ord(char):04X}" + (f" {unicodedata.name(char, '')}".rstrip())
        shown = f"'{char}' ({code})" if char.isprintable() else code
        return FormulaError(
            f"Character {shown} is not allowed",
            position=position,
            text=text,
            hint="formulas use plain ASCII letters, digits, spaces and operators",
        )
    return FormulaError(f"Unexpected '{char}'", position=position, text=text)


def _unclosed_paren(text: str) -> int | None:
    opened: list[int] = []
    for position, char in enumerate(text):
        if char == "(":
            opened.append(position)
        elif char == ")" and opened:
            opened.pop()
    return opened[-1] if opened else None


def _line_column(text: str, position: int) -> tuple[int, int]:
    """1-based line and column of a 0-based offset."""
    line_start = text.rfind("\n", 0, position) + 1
    return text.count("\n", 0, position) + 1, position - line_start + 1


def _where(text: str, position: int) -> str:
    """'column 5' for a one-line formula, 'line 2, column 5' when it has several lines."""
    line, column = _line_column(text, position)
    return f"line {line}, column {column}" if "\n" in text.rstrip() else f"column {column}"


# ---------------------------------------------------------------------------------------------
# Validation against the known measures and KPIs, and units
# ---------------------------------------------------------------------------------------------


def validate(formula: Formula, *, known_names: set[str], units: Mapping[str, str] | None = None) -> None:
    """Refuse a formula that can't be computed: unknown names, wrong arity, unit mismatches.

    Syntax, function names, arity and limits are checked when the Formula is made (by parse);
    they are checked again here so a hand-built tree gets the same treatment. ``units`` maps names
    to units ("currency", "days", ...); names without a unit are compatible with anything.
    """
    if not isinstance(formula, Formula):
        raise TypeError(f"validate() takes a Formula, not {type(formula).__name__}")
    text = formula.text or ""
    try:
        _check_structure(formula.root)
    except FormulaError as error:
        raise error.located(text) from None
    known = set(known_names)
    positions = _first_positions(formula.root)
    for name, position in sorted(positions.items(), key=lambda item: (item[1], item[0])):
        if name not in known:
            close = difflib.get_close_matches(name, sorted(known), n=1, cutoff=0.6)
            raise FormulaError(
                f"Unknown name '{name}'",
                position=position,
                text=text,
                hint=f"did you mean '{close[0]}'?" if close else "it is not a measure or KPI",
            )
    if units is not None:
        infer_unit(formula, units)


@dataclass(frozen=True)
class _Unit:
    """A unit as base units with exponents; dimensionless is empty (ratio, or percent)."""

    dims: tuple[tuple[str, int], ...] = ()
    percent: bool = False
    constant: bool = False  # a plain number: scales anything, adds to anything


_CONSTANT = _Unit(constant=True)
_DIMENSIONLESS = frozenset({"ratio", "percent", ""})


def _parse_unit(text: str) -> _Unit:
    """'currency', 'days', 'ratio', 'percent', or a derived unit as written by infer_unit
    ('currency/days', 'currency*days', '1/days')."""
    cleaned = text.strip().lower().replace(" ", "")
    if cleaned in _DIMENSIONLESS:
        return _Unit(percent=cleaned == "percent")
    dims: dict[str, int] = {}
    for index, part in enumerate(cleaned.split("/")):
        sign = 1 if index == 0 else -1
        for factor in part.split("*"):
            base, _, power = factor.partition("^")
            if base in ("", "1") or base in _DIMENSIONLESS:
                continue
            exponent = int(power) if power.lstrip("-").isdigit() else 1
            dims[base] = dims.get(base, 0) + sign * exponent
    return _Unit(tuple(sorted((base, exp) for base, exp in dims.items() if exp)))


def _unit_text(unit: _Unit | None) -> str:
    if unit is None:
        return "an undeclared unit"
    if unit.constant:
        return "a plain number"
    if not unit.dims:
        return "percent" if unit.percent else "ratio"
    top = [base if exp == 1 else f"{base}^{exp}" for base, exp in unit.dims if exp > 0]
    bottom = [base if exp == -1 else f"{base}^{-exp}" for base, exp in unit.dims if exp < 0]
    return "*".join(top or ["1"]) + "".join(f"/{base}" for base in bottom)


def _unit_product(left: _Unit | None, right: _Unit | None, sign: int) -> _Unit | None:
    if left is None or right is None:
        return None
    if right.constant:
        return left
    if left.constant and sign == 1:
        return right
    dims = dict(left.dims)
    for base, exp in right.dims:
        dims[base] = dims.get(base, 0) + sign * exp
    return _Unit(tuple(sorted((base, exp) for base, exp in dims.items() if exp)))


def _unit_join(left: _Unit | None, right: _Unit | None) -> tuple[_Unit | None, bool]:
    """The unit of a sum (or comparison, min, max, if) of the two; False when incompatible.

    An undeclared unit (None) and a plain number go with anything; the known unit wins.
    """
    known = [unit for unit in (left, right) if unit is not None and not unit.constant]
    if len(known) == 2:
        first, second = known
        if first.dims != second.dims:
            return first, False
        return _Unit(first.dims, percent=first.percent or second.percent), True
    if known:
        return known[0], True
    if left is None or right is None:
        return None, True
    return _CONSTANT, True


def infer_unit(formula: Formula, units: Mapping[str, str]) -> str | None:
    """The unit of the formula's result, or None if it depends on a name without a declared unit.

    Adding, subtracting, comparing (and min, max, the two results of if) need the same unit
    and raise FormulaError otherwise; * and / derive units (currency / currency is a ratio,
    currency / currency * days is days). Plain numbers fit anywhere. Dimensionless results are
    "ratio" ("percent" when they come only from percent inputs).
    """
    declared = {name: _parse_unit(unit) for name, unit in units.items() if unit}
    unit = _infer(formula.root, declared, formula.text or "")
    if unit is None:
        return None
    return "ratio" if unit.constant else _unit_text(unit)


def _infer(node: Expr, declared: Mapping[str, _Unit], text: str) -> _Unit | None:
    def mismatch(summary: str, position: int) -> FormulaError:
        return FormulaError(summary, position=position, text=text)

    match node:
        case Number():
            return _CONSTANT
        case Name(name=name):
            return declared.get(name)
        case Unary(op="not"):
            return _Unit()
        case Unary(operand=operand):
            return _infer(operand, declared, text)
        case Compare(op=op, left=left, right=right):
            lu, ru = _infer(left, declared, text), _infer(right, declared, text)
            if not _unit_join(lu, ru)[1]:
                raise mismatch(f"Cannot compare {_unit_text(lu)} with {_unit_text(ru)}", node.op_position)
            return _Unit()
        case Power(base=base, exponent=exponent):
            unit = _infer(base, declared, text)
            power = _literal_value(exponent) or Decimal(0)
            if unit is None or unit.constant or not unit.dims:
                return unit
            if power != power.to_integral_value():
                raise mismatch(f"Cannot raise {_unit_text(unit)} to a fractional power", node.op_position)
            return _Unit(tuple((base_, exp * int(power)) for base_, exp in unit.dims if exp * int(power)))
        case Chain(operands=operands, ops=ops):
            result = _infer(operands[0], declared, text)
            for op, operand, position in zip(ops, operands[1:], node.op_positions, strict=True):
                unit = _infer(operand, declared, text)
                if op in ("and", "or"):
                    result = _Unit()
                elif op in ("*", "/"):
                    result = _unit_product(result, unit, 1 if op == "*" else -1)
                else:
                    joined, ok = _unit_join(result, unit)
                    if not ok:
                        if op == "+":
                            summary = f"Cannot add {_unit_text(result)} and {_unit_text(unit)}"
                        else:
                            summary = f"Cannot subtract {_unit_text(unit)} from {_unit_text(result)}"
                        raise mismatch(summary, position)
                    result = joined
            if any(op in ("and", "or") for op in ops):
                return _Unit()
            return result
        case Call(function="days"):
            return _Unit((("days", 1),))
        case Call(function="if", args=(condition, when_true, when_false)):
            _infer(condition, declared, text)
            tu, fu = _infer(when_true, declared, text), _infer(when_false, declared, text)
            joined, ok = _unit_join(tu, fu)
            if not ok:
                raise FormulaError(
                    f"The two results of if() have different units ({_unit_text(tu)} and {_unit_text(fu)})",
                    position=node.position,
                    text=text,
                    hint="both must be the same kind of number",
                )
            return joined
        case Call(function="min" | "max", args=args):
            result = _infer(args[0], declared, text)
            for arg in args[1:]:
                unit = _infer(arg, declared, text)
                joined, ok = _unit_join(result, unit)
                if not ok:
                    raise mismatch(
                        f"Cannot take the {node.function} of {_unit_text(result)} and {_unit_text(unit)}",
                        node.position,
                    )
                result = joined
            return result
        case Call(function="round", args=args):
            return _infer(args[0], declared, text)
        case Call(args=args):
            # abs and the period functions keep the unit of their argument.
            return _infer(args[0], declared, text)
    raise TypeError(f"not a formula node: {node!r}")


# ---------------------------------------------------------------------------------------------
# KPIs that refer to KPIs: cycles and order
# ---------------------------------------------------------------------------------------------


def _dependencies(definitions: Mapping[str, Formula]) -> dict[str, list[str]]:
    """KPI code -> the KPI codes its formula names, in order of first appearance."""
    graph: dict[str, list[str]] = {}
    for code, formula in definitions.items():
        positions = _first_positions(formula.root)
        graph[code] = [
            name for name, _ in sorted(positions.items(), key=lambda i: (i[1], i[0])) if name in definitions
        ]
    return graph


def find_cycle(definitions: Mapping[str, Formula], *, start: str | None = None) -> list[str] | None:
    """A cycle among KPI definitions as a path (["a", "b", "a"]; ["a", "a"] for self-reference).

    Only KPI codes (keys of ``definitions``) are followed; other names are measures. With
    ``start``, a cycle through that KPI (the one being saved) is looked for first.
    """
    graph = _dependencies(definitions)
    done: set[str] = set()
    roots = ([start] if start in graph else []) + sorted(graph)
    for root in roots:
        if root in done:
            continue
        # Iterative depth-first search; `path` is the current chain of KPIs being explored.
        path: list[str] = [root]
        on_path: dict[str, int] = {root: 0}
        stack: list[Iterator[str]] = [iter(graph[root])]
        while stack:
            following = next(stack[-1], None)
            if following is None:
                stack.pop()
                finished = path.pop()
                del on_path[finished]
                done.add(finished)
            elif following in on_path:
                return path[on_path[following] :] + [following]
            elif following not in done:
                on_path[following] = len(path)
                path.append(following)
                stack.append(iter(graph[following]))
    return None


def evaluation_order(definitions: Mapping[str, Formula]) -> list[str]:
    """KPI codes so that every KPI comes after the KPIs its formula uses. Raises CycleError."""
    cycle = find_cycle(definitions)
    if cycle is not None:
        raise CycleError(cycle, definitions)
    graph = _dependencies(definitions)
    order: list[str] = []
    placed: set[str] = set()
    for root in sorted(graph):
        if root in placed:
            continue
        stack: list[tuple[str, Iterator[str]]] = [(root, iter(graph[root]))]
        placed.add(root)
        while stack:
            code, pending = stack[-1]
            following = next(pending, None)
            if following is None:
                stack.pop()
                order.append(code)
            elif following not in placed:
                placed.add(following)
                stack.append((following, iter(graph[following])))
    return order


# ---------------------------------------------------------------------------------------------
# Evaluation
# ---------------------------------------------------------------------------------------------

_STEP: dict[str, int] = {"month": 1, "quarter": 3, "year": 12}  # months per period
_MONTH_NAMES = np.array(["Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"])
# Bound on nested evaluation, so that KPI definitions expanded inside one another can't exhaust
# Python's stack: each level costs at most about four frames; an expanded KPI counts three levels.
_MAX_EVAL_DEPTH = 150
_MAX_RANGE = 1_000_000  # periods between the first and the last row

_Mode = Literal["point", "ytd", "ttm"]
_OUT_OF_RANGE = "result is out of range (too large to compute)"


@dataclass(frozen=True)
class EvalContext:
    """How to read the frame's periods and columns.

    ``grain`` is the grain of every row. ``fiscal_year_start_month`` (1-12) places fiscal years
    and quarters. ``behaviours`` says, per column, whether it is a "flow" (revenue: a period
    sums its months, ytd and ttm sum periods) or a "balance" (receivables: a period is its
    closing value; ytd and ttm of a balance is the balance itself). ``definitions`` gives the
    formulas of KPI columns: ytd() or ttm() of a KPI recomputes its formula from year-to-date or
    trailing measures (never sums a ratio), and a KPI missing from the frame is computed from its
    formula.

    No monthly frame is needed at quarter or year grain: quarters and years start where fiscal
    years do, so a quarter's year to date is a whole number of quarters, its trailing twelve
    months are exactly four quarters, and every opening balance is the previous quarter's close.

    ``missing_columns`` is for a frame of several groups (see :func:`evaluate`): the columns a
    group does not have, by group label. That group reads them as if its own frame had no such
    column, while the other groups read the frame's column.
    """

    grain: Grain = "month"
    fiscal_year_start_month: int = 1
    behaviours: Mapping[str, TimeBehaviour] = field(default_factory=dict)
    definitions: Mapping[str, Formula] = field(default_factory=dict)
    missing_columns: Mapping[Hashable, Collection[str]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.grain not in _STEP:
            raise ValueError(f"unknown grain {self.grain!r}; use one of {', '.join(GRAINS)}")
        if not isinstance(self.fiscal_year_start_month, int) or not 1 <= self.fiscal_year_start_month <= 12:
            raise ValueError(f"fiscal_year_start_month must be 1-12, got {self.fiscal_year_start_month!r}")
        for column, behaviour in self.behaviours.items():
            if behaviour not in ("flow", "balance"):
                raise ValueError(
                    f"time behaviour of {column!r} must be 'flow' or 'balance', got {behaviour!r}"
                )


@dataclass(frozen=True)
class EvalResult:
    """One value per row of the frame (same index): NaN where empty, with the reason why."""

    values: pd.Series
    reasons: pd.Series

    def as_decimals(self, places: int) -> pd.Series:
        """Values as Decimal rounded half away from zero to ``places``; None where empty.

        Goes through the shortest float repr, so 0.1 + 0.2 becomes Decimal('0.30') at 2 places.
        """
        quantum = Decimal(1).scaleb(-places)

        def convert(value: float) -> Decimal | None:
            if not np.isfinite(value):
                return None
            return Decimal(repr(float(value))).quantize(quantum, rounding=ROUND_HALF_UP)

        return self.values.map(convert).astype(object)


@dataclass(frozen=True, slots=True)
class _Vec:
    """Values over the evaluator's regular range of periods, and a reason wherever one is NaN."""

    num: np.ndarray
    why: np.ndarray  # object array: str where num is NaN, None elsewhere


def _month_numbers(index: pd.Index) -> np.ndarray:
    """Period starts as month numbers (year * 12 + month - 1)."""
    if isinstance(index, pd.PeriodIndex):
        months = index.asfreq("M", how="start")
        if months.hasnans:
            raise ValueError("the frame's index has missing periods (NaT)")
        return np.asarray(months.year, dtype=np.int64) * 12 + np.asarray(months.month, dtype=np.int64) - 1
    if not isinstance(index, pd.DatetimeIndex):
        if index.dtype != object:  # numbers would silently become nanoseconds since 1970
            raise ValueError(
                "the frame must be indexed by period start dates (a DatetimeIndex or PeriodIndex)"
            )
        try:
            index = pd.DatetimeIndex(index)
        except (TypeError, ValueError) as error:
            raise ValueError(
                "the frame must be indexed by period start dates (a DatetimeIndex or PeriodIndex)"
            ) from error
    if index.hasnans:
        raise ValueError("the frame's index has missing dates (NaT)")
    if len(index) and not ((index.day == 1).all() and (index == index.normalize()).all()):
        raise ValueError("the frame's index must hold period starts: the first day of a month, at midnight")
    return np.asarray(index.year, dtype=np.int64) * 12 + np.asarray(index.month, dtype=np.int64) - 1


def _groups_and_months(index: pd.MultiIndex) -> tuple[np.ndarray, np.ndarray, list[Hashable]]:
    """For a (group, ..., period start) index: each row's month number and group number, and
    the label of each group (a tuple when the group takes several levels)."""
    if index.nlevels < 2:
        raise ValueError("a frame of groups is indexed by (group, ..., period start)")
    level_codes = [np.asarray(codes, dtype=np.int64) for codes in index.codes]
    if any((codes < 0).any() for codes in level_codes):
        raise ValueError("the frame's index has missing group labels or periods")
    months = _month_numbers(index.levels[-1])[level_codes[-1]]
    group_levels = level_codes[:-1]
    combined = np.ravel_multi_index(group_levels, [len(level) for level in index.levels[:-1]])
    _, first_rows, codes = np.unique(combined, return_index=True, return_inverse=True)
    labels: list[Hashable] = []
    for row in first_rows:
        parts = tuple(index.levels[n][codes_[row]] for n, codes_ in enumerate(group_levels))
        labels.append(parts if len(parts) > 1 else parts[0])
    return months, np.asarray(codes, dtype=np.int64).reshape(-1), labels


def _months_to_days(months: np.ndarray) -> np.ndarray:
    """Day number of the first day of each month number (only differences are used)."""
    return (months - 1970 * 12).astype("datetime64[M]").astype("datetime64[D]").astype(np.int64)


def _period_label(number: int, step: int, fy_start: int) -> str:
    """The label of the period of ``step`` months starting at month ``number``."""
    year, month = number // 12, number % 12 + 1
    if step == 1:
        return f"{_MONTH_NAMES[month - 1]} {year}"
    fiscal_year = year + 1 if fy_start != 1 and month >= fy_start else year
    text = f"FY{fiscal_year}" if fy_start != 1 else str(fiscal_year)
    if step == 3:
        text += f" Q{((month - fy_start) % 12) // 3 + 1}"
    return text


@dataclass(frozen=True)
class Layout:
    """Each frame row's group and period, for a caller that built the frame from them: the
    frame's index is then not read (analysing a MultiIndex of dates costs more than
    evaluating a formula over a small frame). Group g is ``labels[g]``, as a frame indexed by
    (group, ..., period start) would name it in ``EvalContext.missing_columns``."""

    months: np.ndarray  # each row's period start as a month number (year * 12 + month - 1)
    groups: np.ndarray  # each row's group number
    labels: Sequence[Hashable]
    # Each group's grain ("month", "quarter" or "year"); None: every group has the context's.
    # One frame can then hold the months, quarters and years of its series, each group
    # evaluated at its own grain: one pass of each formula instead of one per grain.
    grains: Sequence[str] | None = None


@dataclass(frozen=True)
class _Range:
    """The regular range of periods an index spans (one per group, laid end to end)."""

    size: int
    bounds: np.ndarray  # group g holds positions bounds[g] to bounds[g + 1]
    group_labels: list[Hashable]
    group: np.ndarray  # group of each position
    start: np.ndarray  # position of the first period of each position's group
    rows: np.ndarray  # each frame row's position
    index: np.ndarray  # periods since its group's first period
    months: np.ndarray  # start month (year * 12 + month - 1) of each position
    into_year: np.ndarray  # periods from the start of the fiscal year (0 for the year's first)
    step: np.ndarray  # months per period of each position (its group's grain)
    group_step: np.ndarray  # months per period of each group

    @classmethod
    def of(cls, index: pd.Index, context: EvalContext, layout: Layout | None = None) -> _Range:
        """The range of ``index``, remembered while the index lives: evaluating every KPI over
        one frame analyses its index once. With a ``layout``, the index is not read."""
        if layout is not None:
            return cls._build(index, context, layout)
        key = (id(index), context.grain, context.fiscal_year_start_month)
        cached = _RANGES.get(key)
        if cached is not None and cached[0]() is index:
            return cached[1]
        found = cls._build(index, context)
        if len(_RANGES) >= 32:
            _RANGES.clear()
        _RANGES[key] = (weakref.ref(index), found)
        return found

    @classmethod
    def _build(cls, index: pd.Index, context: EvalContext, layout: Layout | None = None) -> _Range:
        fy_start = context.fiscal_year_start_month
        grains: Sequence[str] | None = None
        if layout is not None:
            months, codes, group_labels = layout.months, layout.groups, list(layout.labels)
            if len(months) != len(index) or len(codes) != len(index):
                raise ValueError("the layout does not have one month and one group per frame row")
            if len(codes) and (codes.min() < 0 or codes.max() >= len(group_labels)):
                raise ValueError("the layout's groups do not match its group labels")
            grains = layout.grains
            if grains is not None and (len(grains) != len(group_labels) or not set(grains) <= _STEP.keys()):
                raise ValueError("the layout does not give one grain (month, quarter or year) per group")
        elif isinstance(index, pd.MultiIndex):
            months, codes, group_labels = _groups_and_months(index)
        else:
            months = _month_numbers(index)
            codes = np.zeros(len(months), dtype=np.int64)
            group_labels = [None]
        groups = len(group_labels)
        grain_of = grains if grains is not None else [context.grain] * groups
        group_step = np.array([_STEP[grain] for grain in grain_of], dtype=np.int64)
        if len(np.unique(codes * (int(months.max()) - int(months.min()) + 1) + months)) != len(months):
            raise ValueError("the frame's index has duplicate periods")
        month_of_year = months % 12 + 1
        row_step = group_step[codes]
        off = (month_of_year - fy_start) % row_step != 0
        if off.any():
            bad = int(months[off][0])
            raise ValueError(
                f"{bad // 12}-{bad % 12 + 1:02d} is not the start of a fiscal {grain_of[int(codes[off][0])]} "
                f"(the fiscal year starts in month {fy_start})"
            )
        first = np.full(groups, np.iinfo(np.int64).max)
        last = np.full(groups, np.iinfo(np.int64).min)
        np.minimum.at(first, codes, months)
        np.maximum.at(last, codes, months)
        sizes = (last - first) // group_step + 1
        size = int(sizes.sum())
        for step in np.unique(group_step).tolist():  # the limit is per grain, as for a frame of one
            spanned = int(sizes[group_step == step].sum())
            if spanned > _MAX_RANGE:
                raise ValueError(f"the frame spans {spanned:,} periods; the limit is {_MAX_RANGE:,}")
        bounds = np.concatenate([[0], np.cumsum(sizes)])
        group = np.repeat(np.arange(groups, dtype=np.int64), sizes)
        start = bounds[group]
        in_group = np.arange(size, dtype=np.int64) - start
        step = group_step[group]
        period_months = first[group] + step * in_group
        return cls(
            size=size,
            bounds=bounds,
            group_labels=group_labels,
            group=group,
            start=start,
            rows=bounds[codes] + (months - first[codes]) // row_step,
            index=in_group,
            months=period_months,
            into_year=((period_months % 12 + 1 - fy_start) % 12) // step,
            step=step,
            group_step=group_step,
        )


_RANGES: dict[tuple[int, str, int], tuple[weakref.ref, _Range]] = {}


class _Evaluator:
    """Evaluates one formula over a regular range of periods, from the first row to the last.

    Working on the regular range (the frame's rows plus any missing periods in between) makes
    every shift exact: prev() is one row back and last_year() twelve months back by label, and a
    gap in the data is a missing value with a reason rather than a neighbour's value.

    A frame of several groups gets one such range per group, laid end to end; every look back
    (shifts, windows, opening balances) stays inside its group, so each group's result is what
    evaluating that group alone gives.
    """

    def __init__(self, frame: pd.DataFrame, context: EvalContext, layout: Layout | None = None) -> None:
        self.frame = frame
        self.context = context
        periods = _Range.of(frame.index, context, layout)
        self.size, self.bounds, self.group_labels = periods.size, periods.bounds, periods.group_labels
        self.group, self.start, self.rows = periods.group, periods.start, periods.rows
        self.index, self.months, self.into_year = periods.index, periods.months, periods.into_year
        # Months per period and periods in a year (12, 4 or 1), at each position and per group.
        self.step, self.group_step = periods.step, periods.group_step
        self.per_year = 12 // self.step
        self._labels: np.ndarray | None = None
        self._label_of: dict[int, str] = {}  # by month number * 16 + months in the period
        self._position_labels: tuple[np.ndarray, np.ndarray] | None = None  # see ``column``
        self._leaves: dict[tuple[str, _Mode], _Vec] = {}
        self._expanding: list[str] = []
        self._depth = 0
        self._added: dict[str, np.ndarray] = {}  # columns added after the frame's, by name
        self._floats: dict[str, np.ndarray] | None = None  # the frame's columns, when all are floats

    def add_column(self, name: str, values: np.ndarray) -> None:
        """Read ``values`` (one per frame row) as the frame's column ``name`` from now on."""
        self._added[name] = values
        self._leaves = {key: vec for key, vec in self._leaves.items() if key[0] != name}

    def start_formula(self) -> None:
        """Forget what depends on the formula being evaluated: KPI expansions (their reasons for
        a cycle or too deep a nesting depend on the path); columns stay."""
        definitions = self.context.definitions
        self._leaves = {
            key: vec
            for key, vec in self._leaves.items()
            if key[0] not in definitions or (key[1] == "point" and key[0] in self._added)
        }
        self._expanding = []
        self._depth = 0

    # -- helpers --

    def labels(self, months: np.ndarray | None = None, steps: np.ndarray | None = None) -> np.ndarray:
        """Period labels as users see them: 'Mar 2024', 'FY2025 Q1', '2024'; of each position,
        or of ``months`` that are periods of ``steps`` months each."""
        if months is None:
            if self._labels is None:
                self._labels = self.labels(self.months, self.step)
            return self._labels
        if steps is None:
            raise TypeError("labels of given months need their periods' lengths (steps)")
        texts, which = self._distinct_labels(months, steps)
        return texts[which]

    def _distinct_labels(self, months: np.ndarray, steps: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The distinct labels of these periods (objects) and each period's among them: a frame
        has a few dozen periods over hundreds of rows, each labelled once."""
        keys = np.asarray(months, dtype=np.int64) * 16 + np.broadcast_to(
            np.asarray(steps, dtype=np.int64), len(months)
        )
        distinct, which = np.unique(keys, return_inverse=True)
        fy_start, known = self.context.fiscal_year_start_month, self._label_of
        texts = np.empty(len(distinct), dtype=object)
        for n, key in enumerate(distinct.tolist()):
            text = known.get(key)
            if text is None:
                text = known[key] = _period_label(key // 16, key % 16, fy_start)
            texts[n] = text
        return texts, which.reshape(-1)

    def empty(self, reason: str) -> _Vec:
        return _Vec(np.full(self.size, np.nan), np.full(self.size, reason, dtype=object))

    def constant(self, value: float) -> _Vec:
        return _Vec(np.full(self.size, value), np.full(self.size, None, dtype=object))

    def combine(self, num: np.ndarray, *operands: _Vec, default: str = _OUT_OF_RANGE) -> _Vec:
        """A result computed from operands: NaN wherever one is NaN, with the first one's reason.

        Any other non-finite result (overflow, inf - inf) becomes NaN with ``default``.
        """
        why = np.full(self.size, None, dtype=object)
        missing = np.zeros(self.size, dtype=bool)
        for operand in reversed(operands):
            nan = np.isnan(operand.num)
            if nan.any():
                why = np.where(nan, operand.why, why)
                missing |= nan
        num = np.where(missing, np.nan, num)
        bad = ~np.isfinite(num) & ~missing
        if bad.any():
            num = np.where(bad, np.nan, num)
            why = np.where(bad, default, why)
        return _Vec(num, why)

    def shift(self, vec: _Vec, periods: int, function: str) -> _Vec:
        """Values ``periods`` periods earlier; the first rows (of each group) have no history."""
        short = self.index < periods
        source = np.where(short, 0, np.arange(self.size) - periods)
        num = np.where(short, np.nan, vec.num[source])
        why = np.where(short, None, vec.why[source])
        if short.any():
            back = np.broadcast_to(periods * self.step, self.size)
            needed = self.labels(self.months[short] - back[short], self.step[short])
            why[short] = f"not enough history for {function} (needs " + needed + ")"
        return _Vec(num, why)

    def window_start(self, mode: _Mode) -> np.ndarray:
        """Position of the first period of each row's window (may be negative: before the data)."""
        if mode == "ytd":
            return self.index - self.into_year
        if mode == "ttm":
            return self.index - (self.per_year - 1)
        return self.index

    # -- evaluation --

    def evaluate(self, node: Expr, mode: _Mode) -> _Vec:
        self._depth += 1
        try:
            if self._depth > _MAX_EVAL_DEPTH:
                return self.empty("formula is nested too deeply (through KPI definitions)")
            return self._evaluate(node, mode)
        finally:
            self._depth -= 1

    def _evaluate(self, node: Expr, mode: _Mode) -> _Vec:
        match node:
            case Number(value=value):
                return self.constant(float(value))
            case Name(name=name):
                return self.name(name, mode)
            case Unary(op="-", operand=operand):
                vec = self.evaluate(operand, mode)
                return _Vec(-vec.num, vec.why)
            case Unary(operand=operand):
                vec = self.evaluate(operand, mode)
                return self.combine((vec.num == 0).astype(float), vec)
            case Compare(op=op, left=left, right=right):
                lv, rv = self.evaluate(left, mode), self.evaluate(right, mode)
                return self.combine(_COMPARISONS[op](lv.num, rv.num).astype(float), lv, rv)
            case Power(base=base, exponent=exponent):
                return self.power(node, self.evaluate(base, mode), float(_literal_value(exponent) or 0))
            case Chain(operands=operands, ops=ops):
                return self.chain(node, operands, ops, mode)
            case Call():
                return self.call(node, mode)
        raise TypeError(f"not a formula node: {node!r}")

    def chain(self, node: Chain, operands: tuple[Expr, ...], ops: tuple[str, ...], mode: _Mode) -> _Vec:
        values = [self.evaluate(operand, mode) for operand in operands]
        if ops[0] in ("and", "or"):
            truth = np.stack([vec.num != 0 for vec in values])
            num = truth.all(axis=0) if ops[0] == "and" else truth.any(axis=0)
            return self.combine(num.astype(float), *values)
        result = values[0]
        for op, operand, vec in zip(ops, operands[1:], values[1:], strict=True):
            if op == "+":
                result = self.combine(result.num + vec.num, result, vec)
            elif op == "-":
                result = self.combine(result.num - vec.num, result, vec)
            elif op == "*":
                result = self.combine(result.num * vec.num, result, vec)
            else:
                zero = vec.num == 0
                combined = self.combine(
                    np.where(zero, np.nan, result.num) / np.where(zero, 1.0, vec.num), result, vec
                )
                by_zero = zero & ~np.isnan(result.num)
                result = _Vec(
                    combined.num,
                    np.where(by_zero, f"division by zero ({_short(operand)} is 0)", combined.why),
                )
        return result

    def power(self, node: Power, base: _Vec, exponent: float) -> _Vec:
        zero = (base.num == 0) & (exponent < 0)
        negative = (base.num < 0) & (exponent != int(exponent))
        num = np.where(zero | negative, np.nan, np.power(np.where(zero | negative, 1.0, base.num), exponent))
        result = self.combine(num, base)
        why = np.where(zero, f"division by zero ({_short(node.base)} is 0)", result.why)
        why = np.where(negative, f"no real result ({_short(node.base)} is negative)", why)
        return _Vec(result.num, why)

    def call(self, node: Call, mode: _Mode) -> _Vec:
        function, args = node.function, node.args
        if function == "days":
            return self.days(mode)
        if function == "ytd" or function == "ttm":
            if mode not in ("point", function):
                # Possible only through a KPI definition expanded inside the other window.
                return self.empty(f"{function}() cannot be used inside {mode}()")
            return self.evaluate(args[0], function)
        if function == "avg_balance":
            return self.average_balance(args[0], mode)
        values = [self.evaluate(arg, mode) for arg in args]
        if function == "prev":
            return self.shift(values[0], 1, "prev")
        if function == "last_year":
            return self.shift(values[0], self.per_year, "last_year")
        if function == "if":
            condition, when_true, when_false = values
            chosen = condition.num != 0
            num = np.where(chosen, when_true.num, when_false.num)
            why = np.where(chosen, when_true.why, when_false.why)
            nan = np.isnan(condition.num)
            return _Vec(np.where(nan, np.nan, num), np.where(nan, condition.why, why))
        if function == "min":
            return self.combine(np.minimum.reduce([vec.num for vec in values]), *values)
        if function == "max":
            return self.combine(np.maximum.reduce([vec.num for vec in values]), *values)
        if function == "abs":
            return _Vec(np.abs(values[0].num), values[0].why)
        if function == "round":
            places = int(_literal_value(args[1]) or 0) if len(args) == 2 else 0
            scale = 10.0**places
            scaled = values[0].num * scale
            # Half away from zero (2.5 -> 3, -2.5 -> -3), as finance expects; numpy rounds to even.
            return self.combine(np.trunc(scaled + np.copysign(0.5, scaled)) / scale, values[0])
        raise TypeError(f"unknown function {function!r}")

    def days(self, mode: _Mode) -> _Vec:
        """Calendar days in each period, or in its year-to-date or trailing-twelve-months window."""
        end = self.months + self.step  # first month after the period
        if mode == "ytd":
            start = self.months - self.into_year * self.step
        elif mode == "ttm":
            start = end - 12
        else:
            start = self.months
        days = (_months_to_days(end) - _months_to_days(start)).astype(float)
        return _Vec(days, np.full(self.size, None, dtype=object))

    def average_balance(self, argument: Expr, mode: _Mode) -> _Vec:
        """(opening + closing) / 2; opening is the closing balance just before the window starts."""
        closing = self.evaluate(argument, "point")
        opening_at = self.window_start(mode) - 1
        history = opening_at < 0
        safe = self.start + np.where(history, 0, opening_at)
        why = closing.why[safe]
        if history.any():
            back = self.months[history] - (self.index[history] - opening_at[history]) * self.step[history]
            needed = self.labels(back, self.step[history])
            why[history] = "not enough history for avg_balance (needs the closing balance of " + needed + ")"
        opening = _Vec(np.where(history, np.nan, closing.num[safe]), why)
        return self.combine((opening.num + closing.num) / 2, opening, closing)

    def name(self, name: str, mode: _Mode) -> _Vec:
        key = (name, mode)
        if key not in self._leaves:
            self._leaves[key] = self._name(name, mode)
        return self._leaves[key]

    def _name(self, name: str, mode: _Mode) -> _Vec:
        behaviour = self.context.behaviours.get(name)
        if mode == "point" or behaviour == "balance":
            column = self.column(name)
            if column is None:
                return self.not_a_column(name)
            lacking = self.lacking(name)
            if lacking is None:
                return column
            instead = self.not_a_column(name)
            num = np.where(lacking, instead.num, column.num)
            return _Vec(num, np.where(lacking, instead.why, column.why))
        if behaviour == "flow":
            return self.window_sum(self.name(name, "point"), mode)
        if name in self.context.definitions:
            return self.expand(name, mode)
        return self.empty(f"{mode} needs to know whether {name} is a flow or a balance")

    def not_a_column(self, name: str) -> _Vec:
        if name in self.context.definitions:
            return self.expand(name, "point")
        return self.empty(f"missing input: {name} is not in the data")

    def lacking(self, name: str) -> np.ndarray | None:
        """Positions of the groups that do not have column ``name``, or None when all have it."""
        missing = self.context.missing_columns
        if not missing:
            return None
        groups = [g for g, label in enumerate(self.group_labels) if name in missing.get(label, ())]
        return np.isin(self.group, groups) if groups else None

    def expand(self, code: str, mode: _Mode) -> _Vec:
        """A KPI computed from its own formula (inside ytd()/ttm(), or when not in the frame)."""
        if code in self._expanding:
            path = self._expanding[self._expanding.index(code) :] + [code]
            return self.empty("cycle in KPI formulas: " + " -> ".join(path))
        self._expanding.append(code)
        self._depth += 2
        try:
            return self.evaluate(self.context.definitions[code].root, mode)
        finally:
            self._depth -= 2
            self._expanding.pop()

    def column(self, name: str) -> _Vec | None:
        raw = self._added.get(name)
        if raw is None:
            raw = self.frame_column(name)
            if raw is None:
                return None
        num = np.full(self.size, np.nan)
        num[self.rows] = np.where(np.isfinite(raw), raw, np.nan)
        missing = np.isnan(num)
        why = np.full(self.size, None, dtype=object)
        if missing.any():
            if self._position_labels is None:
                self._position_labels = self._distinct_labels(self.months, self.step)
            texts, which = self._position_labels
            reasons = np.array(
                [f"missing input: {name} has no value for {text}" for text in texts], dtype=object
            )
            why[missing] = reasons[which[missing]]
        return _Vec(num, why)

    def frame_column(self, name: str) -> np.ndarray | None:
        """The frame's column as floats (anything non-numeric is NaN), or None if it has none."""
        if name not in self.frame.columns:
            return None
        if self._floats is None:
            # All float columns: read as arrays, once (a column read from the frame is a Series
            # built over the frame's index each time).
            floats = self.frame.columns.is_unique and bool((self.frame.dtypes == np.float64).all())
            block = self.frame.to_numpy(dtype=np.float64) if floats else None
            self._floats = (
                {column: block[:, j] for j, column in enumerate(self.frame.columns)} if floats else {}
            )
        if name in self._floats:
            return self._floats[name]
        series = self.frame[name]
        if isinstance(series, pd.DataFrame):  # duplicated column name: take the first
            series = series.iloc[:, 0]
        if series.dtype == np.float64:
            raw = series.to_numpy()
        else:
            try:
                raw = pd.to_numeric(series, errors="coerce").to_numpy(dtype=float, na_value=np.nan)
            except (TypeError, ValueError):
                raw = np.full(len(series), np.nan)
        return raw

    def window_sum(self, vec: _Vec, mode: _Mode) -> _Vec:
        """A flow summed over each row's window: the fiscal year to date, or the last 12 months."""
        start = self.window_start(mode)
        nan = np.isnan(vec.num)
        filled = np.where(nan, 0.0, vec.num)
        if mode == "ytd":
            fiscal_year = self.index - self.into_year  # at least 1 - 12
            if len(self.group_labels) > 1:  # one key per group and fiscal year
                fiscal_year = self.group * (self.size + 12) + fiscal_year + 12
            sums = pd.Series(filled).groupby(fiscal_year).cumsum().to_numpy(dtype=float)
        else:
            sums = np.empty(self.size)
            for step in np.unique(self.group_step).tolist():  # the groups of one window length at once
                width = 12 // step
                chosen = self.step == step
                groups = np.flatnonzero(self.group_step == step)
                sizes = self.bounds[groups + 1] - self.bounds[groups]
                # Each group's values after width - 1 zeros, end to end: no window leaves its group.
                at = np.arange(int(sizes.sum())) + np.repeat(
                    (width - 1) * np.arange(1, len(groups) + 1), sizes
                )
                padded = np.zeros(len(at) + (width - 1) * len(groups))
                padded[at] = filled[chosen]
                total = padded[at - (width - 1)]
                for back in range(width - 2, -1, -1):  # the window's values in order, oldest first
                    total = total + padded[at - back]
                sums[chosen] = total
        # The latest missing period at or before each row: if it is inside the window, the sum is
        # empty (one from an earlier group is before the window, as the window never leaves its group).
        position = np.arange(self.size)
        last_missing = np.maximum.accumulate(np.where(nan, position, -1)) if self.size else position
        history = start < 0
        missing = ~history & (last_missing >= self.start + start)
        overflow = ~history & ~missing & ~np.isfinite(sums)
        num = np.where(history | missing | overflow, np.nan, sums)
        why = np.where(missing, vec.why[np.maximum(last_missing, 0)], None)
        why = np.where(overflow, _OUT_OF_RANGE, why)
        if history.any():  # ``why`` holds objects (the vector's reasons or None)
            if mode == "ytd":
                starts = self.months[history] - self.into_year[history] * self.step[history]
                needed = self.labels(starts, self.step[history])
                why[history] = (
                    "not enough history for ytd (needs data from "
                    + needed
                    + ", the start of the fiscal year)"
                )
            else:
                for step in np.unique(self.step[history]).tolist():
                    why[history & (self.step == step)] = (
                        f"not enough history for ttm (needs {_YEAR_IN_PERIODS[step]})"
                    )
        return _Vec(num, why)


_YEAR_IN_PERIODS: dict[int, str] = {1: "12 months", 3: "4 quarters", 12: "1 year"}

_COMPARISONS: dict[str, Callable[[np.ndarray, np.ndarray], np.ndarray]] = {
    "<": np.less,
    "<=": np.less_equal,
    ">": np.greater,
    ">=": np.greater_equal,
    "==": np.equal,
    "!=": np.not_equal,
}


def lookback(formula: Formula, context: EvalContext) -> int:
    """How many periods before a row the formula can read to compute that row, at most.

    A value at period p depends only on the inputs of periods p - lookback .. p (a KPI it names
    counts with its own look back), so new inputs at period q can change values only in periods
    q .. q + lookback. It is an upper bound: prev(ytd(x)) counts a whole year for ytd().
    """
    per_year = 12 // _STEP[context.grain]
    visiting: set[str] = set()

    def kpi(name: str, mode: _Mode) -> int:
        if name not in context.definitions or name in visiting:
            return 0  # a measure column; or a cycle, which evaluates to nothing
        visiting.add(name)
        try:
            return reach(context.definitions[name].root, mode)
        finally:
            visiting.discard(name)

    def reach(node: Expr, mode: _Mode) -> int:
        match node:
            case Name(name=name):
                behaviour = context.behaviours.get(name)
                if mode == "point" or behaviour == "balance":
                    return kpi(name, "point")  # a KPI's column holds what its formula gives
                return per_year - 1 if behaviour == "flow" else kpi(name, mode)
            case Call(function="days"):
                return 0
            case Call(function="ytd" | "ttm" as window, args=args):
                return reach(args[0], window) if mode in ("point", window) else 0
            case Call(function="avg_balance", args=args):
                return reach(args[0], "point") + (1 if mode == "point" else per_year)
            case Call(function=function, args=args):
                inner = max(reach(arg, mode) for arg in args)
                return inner + {"prev": 1, "last_year": per_year}.get(function, 0)
        return max((reach(child, mode) for child in _children(node)), default=0)

    return reach(formula.root, "point")


def evaluate(formula: Formula | str, frame: pd.DataFrame, *, context: EvalContext) -> EvalResult:
    """Compute the formula for every row (period) of ``frame`` at once.

    ``frame`` has one row per period of ``context.grain``, indexed by period start (a
    DatetimeIndex of first-of-month dates, or a PeriodIndex), and one column per measure or KPI
    code. Values are read as float64 (Decimal and None are fine; anything non-numeric is missing).
    Rows may be missing (gaps) or unsorted; the result has the frame's index, in its order.

    Several independent series (say one per scenario and entity) can be evaluated at once: index
    the frame by a MultiIndex whose last level is the period start and whose other levels name
    the group. Each group then gets exactly the values and reasons it would get alone: no look
    back (prev, last_year, ytd, ttm, avg_balance) crosses from one group into another.
    ``context.missing_columns`` says which columns a group lacks.

    Data never makes this raise: division by zero, NaN or missing inputs, missing columns and
    short history give NaN with a reason. A malformed index or context raises ValueError.
    """
    if isinstance(formula, str):
        formula = parse(formula)
    if not isinstance(formula, Formula):
        raise TypeError(f"evaluate() takes a Formula, not {type(formula).__name__}")
    if not isinstance(frame, pd.DataFrame):
        raise TypeError(f"evaluate() takes a pandas DataFrame, not {type(frame).__name__}")
    if len(frame) == 0:
        return EvalResult(
            pd.Series([], index=frame.index, dtype=float), pd.Series([], index=frame.index, dtype=object)
        )
    return _result(_Evaluator(frame, context), formula)


def evaluate_in_order(
    formulas: Iterable[tuple[str, Formula]],
    frame: pd.DataFrame,
    *,
    context: EvalContext,
    layout: Layout | None = None,
) -> Iterator[tuple[str, np.ndarray, np.ndarray]]:
    """Evaluate (code, formula) pairs one after the other over one frame, each result then
    read as the frame's column ``code`` by the formulas after it (empty values as missing
    inputs), as if ``frame[code] = evaluate(formula, frame).values`` came after each one.

    Yields (code, values, reasons): what :func:`evaluate` gives, as arrays in the frame's row
    order. The frame is analysed and each of its columns read once for all the formulas, and
    the frame itself is left as it is. With a ``layout`` (see :class:`Layout`) its index is
    not read: it can be any index.
    """
    if not isinstance(frame, pd.DataFrame):
        raise TypeError(f"evaluate_in_order() takes a pandas DataFrame, not {type(frame).__name__}")
    evaluator = _Evaluator(frame, context, layout) if len(frame) else None
    for code, formula in formulas:
        if not isinstance(formula, Formula):
            raise TypeError(f"evaluate_in_order() takes Formulas, not {type(formula).__name__}")
        if evaluator is None:
            yield code, np.empty(0, dtype=float), np.empty(0, dtype=object)
            continue
        evaluator.start_formula()
        num, why = _arrays(evaluator, formula)
        evaluator.add_column(code, num)
        yield code, num, why


def _arrays(evaluator: _Evaluator, formula: Formula) -> tuple[np.ndarray, np.ndarray]:
    """The formula's value and reason for each frame row (in the frame's order)."""
    with np.errstate(all="ignore"):
        result = evaluator.evaluate(formula.root, "point")
    num = result.num[evaluator.rows]
    empty = ~np.isfinite(num)
    why = np.full(len(num), None, dtype=object)
    if empty.any():
        given = result.why[evaluator.rows[empty]]
        # Every rule above gives its own reason; this is a safety net so that no empty value (or
        # infinity) is ever passed on unexplained.
        why[empty] = np.where(given.astype(bool), given, _OUT_OF_RANGE)  # None (or "") is no reason
    return np.where(empty, np.nan, num), why


def _result(evaluator: _Evaluator, formula: Formula) -> EvalResult:
    num, why = _arrays(evaluator, formula)
    index = evaluator.frame.index
    return EvalResult(
        pd.Series(num, index=index, dtype=float, name=str(formula)),
        pd.Series(why, index=index, dtype=object, name="reason"),
    )
