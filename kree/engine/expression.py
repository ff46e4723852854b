"""
The Ptolemy II expression language: tokenizer, parser and evaluator.

Kepler/Ptolemy II workflows compute parameter values and the outputs of
C{Expression} actors with a small expression language.  This module covers
its everyday subset with a tokenizer, a recursive-descent parser (precedence
climbing for the binary operators) that builds an AST of frozen attrs
classes, and an evaluator that walks the AST.  It never uses eval, exec or
compile, never reads a Python attribute named by the user and never reaches
Python builtins: a name means a value from the caller's C{lookup}, a constant
from L{CONSTANTS}, a function of the built-in table or a method of the
method tables, and nothing else.

Grammar, from the lowest precedence up::

    expression := operand { BINARY expression }    precedence climbing:
                    0  c ? a : b   conditional, right-associative
                    1  ||          2  &&          3  |     4  # (xor)
                    5  &           6  == !=       7  < <= > >=
                    8  << >> >>>   9  + -         10 * / %
                  (all binary operators are left-associative)
    operand    := ("-" | "!" | "~") operand
                | postfix [ "^" operand ]           power: right-associative,
                                                    tighter than unary minus
    postfix    := primary { "(" args ")" | "." NAME [ "(" args ")" ] }
    primary    := NUMBER | STRING | true | false | NAME | "(" expression ")"
                | "{" [ expression { "," expression } ] "}"              array
                | "{" label "=" expression { "," label "=" expression } "}" record
    label      := NAME | STRING

Numbers: 42, 0x1F, 500L (long), 1.5, .5, 1e3, 2.5E-3, 1.0d, 1.0f.  Strings
use double quotes with the escapes \\" \\\\ \\n \\t \\r.  C{NAME(args)} indexes
the value of NAME when C{lookup} knows it (C{arr(0)}; Ptolemy indexes arrays
with parentheses) and calls the built-in function NAME otherwise;
C{value(args)} indexes, C{value.name(args)} calls a method and
C{record.name} reads a field.  A bare NAME is looked up first, then taken
from L{CONSTANTS}.

Value model (plain Python): bool (Ptolemy boolean), int (int), L{Long}
(long: an int subclass that keeps its type for L{to_string}), float
(double), str (string), list (array) and dict with str keys (record).
Arithmetic gives float when an operand is a float, else Long when an operand
is a Long, else int.  A long is 64-bit two's complement and wraps around as
in Java: C{-MinLong} and C{abs(MinLong)} are C{MinLong}, C{MaxLong + 1L} is
C{MinLong}, C{2L ^ 64} is C{0L}, a long's shift count is taken modulo 64
(C{1L << 64} is C{1L}), C{long(1.0e30)} is C{MaxLong}.  A decimal long
literal may be at most 9223372036854775808L (the magnitude of C{MinLong},
which is what it stands for, so C{-9223372036854775808L} is C{MinLong}), a
hexadecimal one at most 64 bits (C{0xFFFFFFFFFFFFFFFFL} is C{-1L}).  Ints do
not wrap around at 32 bits as in Java, but any integer result is limited to
L{MAX_INT_BITS} bits.

Resources are bounded so that hostile text fails fast with L{ExpressionError}:
the text is at most L{MAX_LENGTH} characters, bracket nesting and AST depth
at most L{MAX_DEPTH}, strings and arrays at most L{MAX_SIZE}
characters/elements, and one evaluation may produce or visit at most
L{MAX_WORK} elements in total.
"""

from __future__ import annotations

import math
import operator
import re
import sys
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from types import MappingProxyType
from typing import Any, NamedTuple, Union

import attrs

__all__ = [
    "CONSTANTS", "FUNCTION_NAMES", "MAX_DEPTH", "MAX_INT_BITS", "MAX_LENGTH", "MAX_SIZE",
    "MAX_WORK", "ExpressionError", "Long", "Node", "display", "evaluate", "evaluate_text",
    "identifiers", "parse", "parse_value", "to_string",
]

MAX_LENGTH = 100_000  # characters of expression text
MAX_DEPTH = 200  # bracket nesting while parsing, and depth of the AST
MAX_SIZE = 10_000_000  # characters of a string / elements of an array
MAX_INT_BITS = 10_000  # bits of an integer result
MAX_WORK = 2 * MAX_SIZE  # elements produced or visited by one evaluation
MAX_PATTERN_LENGTH = 1000  # characters of a regular expression


class ExpressionError(Exception):
    """An expression that cannot be parsed or evaluated; the message says why (and where)."""


LONG_BITS = 64
_LONG_MODULUS = 1 << LONG_BITS
_LONG_MIN = -(1 << (LONG_BITS - 1))
_LONG_MAX = (1 << (LONG_BITS - 1)) - 1


class Long(int):
    """
    A Ptolemy long (written C{500L}): an int that keeps its type through
    arithmetic.  Every Long is a 64-bit two's-complement value: a larger
    integer given to the constructor wraps around as Java's long arithmetic
    does (C{Long(2**63)} is C{MinLong}).
    """

    __slots__ = ()

    def __new__(cls, value: int = 0) -> "Long":
        value = int(value)
        if not _LONG_MIN <= value <= _LONG_MAX:
            value = (value - _LONG_MIN) % _LONG_MODULUS + _LONG_MIN
        return super().__new__(cls, value)

    def __repr__(self) -> str:
        return f"Long({int(self)})"


CONSTANTS: Mapping[str, Any] = MappingProxyType({
    "PI": math.pi, "pi": math.pi, "E": math.e, "e": math.e,
    "Infinity": math.inf, "NaN": math.nan,
    "MaxInt": 2**31 - 1, "MinInt": -(2**31),
    "MaxLong": Long(_LONG_MAX), "MinLong": Long(_LONG_MIN),
    "MaxDouble": sys.float_info.max, "MinDouble": 5e-324,
})


# ---------------------------------------------------------------------------
# AST


@attrs.frozen
class Literal:
    value: Any


@attrs.frozen
class Name:
    name: str


@attrs.frozen
class ArrayLiteral:
    items: tuple[Node, ...]


@attrs.frozen
class RecordLiteral:
    fields: tuple[tuple[str, Node], ...]


@attrs.frozen
class Unary:
    op: str
    operand: Node


@attrs.frozen
class Binary:
    op: str
    left: Node
    right: Node


@attrs.frozen
class Conditional:
    test: Node
    then: Node
    otherwise: Node


@attrs.frozen
class Call:
    """C{name(args)}: indexes the value of C{name} if the lookup knows it, else calls a function."""

    name: str
    args: tuple[Node, ...]


@attrs.frozen
class Index:
    target: Node
    args: tuple[Node, ...]


@attrs.frozen
class Method:
    target: Node
    name: str
    args: tuple[Node, ...]


@attrs.frozen
class Field:
    target: Node
    name: str


Node = Union[Literal, Name, ArrayLiteral, RecordLiteral, Unary, Binary, Conditional, Call,
             Index, Method, Field]


def _children(node: Node) -> tuple[Node, ...]:
    match node:
        case Unary(operand=operand) | Field(target=operand):
            return (operand,)
        case Binary(left=left, right=right):
            return (left, right)
        case Conditional(test=test, then=then, otherwise=otherwise):
            return (test, then, otherwise)
        case ArrayLiteral(items=items) | Call(args=items):
            return items
        case RecordLiteral(fields=fields):
            return tuple(value for _, value in fields)
        case Index(target=target, args=args) | Method(target=target, args=args):
            return (target, *args)
    return ()


def identifiers(node: Node) -> set[str]:
    """
    The free names that C{node} refers to.  Constant names (PI, e, ...) are
    included since a lookup may define them; a call C{f(x)} contributes C{f}
    unless C{f} is a built-in function.
    """
    found: set[str] = set()
    stack = [node]
    while stack:
        current = stack.pop()
        if isinstance(current, Name):
            found.add(current.name)
        elif isinstance(current, Call) and current.name not in _FUNCTIONS:
            found.add(current.name)
        stack.extend(_children(current))
    return found


def _check_depth(root: Node) -> None:
    stack = [(root, 1)]
    while stack:
        node, depth = stack.pop()
        if depth > MAX_DEPTH:
            raise ExpressionError(f"expression nested too deeply (more than {MAX_DEPTH} levels)")
        stack.extend((child, depth + 1) for child in _children(node))


# ---------------------------------------------------------------------------
# Tokenizer


class _Token(NamedTuple):
    kind: str  # "number", "string", "name", "op" or "end"
    text: str  # as written
    value: Any  # the number or the string's value
    column: int  # 1-based


_TOKEN = re.compile(r"""
    (?P<space>[ \t\r\n\f]+)
  | (?P<number>0[xX][0-9a-fA-F]+[lL]?
      | (?:[0-9]+\.(?![A-Za-z_])[0-9]* | \.[0-9]+ | [0-9]+) (?:[eE][+-]?[0-9]+)? [lLdDfF]?)
  | (?P<name>[A-Za-z_][A-Za-z0-9_]*)
  | (?P<op>>>>|<<|>>|<=|>=|==|!=|&&|\|\||[-+*/%^!~&|\#<>?:(){},.=])
  | (?P<string>")
""", re.VERBOSE)
_NAME_CHAR = re.compile(r"[A-Za-z0-9_]")
_STRING_CHUNK = re.compile(r'[^"\\]*')
_ESCAPES = {'"': '"', "\\": "\\", "n": "\n", "t": "\t", "r": "\r"}


def _syntax_error(what: str, column: int, text: str) -> ExpressionError:
    return ExpressionError(f"{what} at column {column} in '{_excerpt(text, column)}'")


def _excerpt(text: str, column: int, width: int = 80) -> str:
    if len(text) <= width:
        return text
    start = max(0, column - 1 - width // 2)
    end = start + width
    return ("..." if start else "") + text[start:end] + ("..." if end < len(text) else "")


def _tokenize(text: str) -> list[_Token]:
    tokens = []
    position = 0
    while position < len(text):
        match = _TOKEN.match(text, position)
        if match is None:
            raise _syntax_error(f"unexpected character {text[position]!r}", position + 1, text)
        kind, end = match.lastgroup, match.end()
        if kind == "string":
            value, end = _scan_string(text, position)
            tokens.append(_Token("string", text[position:end], value, position + 1))
        elif kind == "number":
            value = _number(text, position, end)
            tokens.append(_Token("number", match.group(), value, position + 1))
        elif kind != "space":
            tokens.append(_Token(kind, match.group(), None, position + 1))
        position = end
    tokens.append(_Token("end", "", None, len(text) + 1))
    return tokens


def _number(text: str, start: int, end: int) -> int | float:
    """The value of the number literal C{text[start:end]}."""
    literal = text[start:end]
    if end < len(text) and _NAME_CHAR.match(text, end):
        raise _syntax_error(f"invalid number '{literal}{text[end]}'", start + 1, text)
    is_long = literal[-1] in "lL"
    is_hex = literal[:2] in ("0x", "0X")
    body = literal[:-1] if literal[-1] in ("lL" if is_hex else "lLdDfF") else literal
    try:
        if is_hex:
            value = int(body[2:], 16)
        elif literal[-1] in "dDfF" or any(c in body for c in ".eE"):
            if is_long:
                raise _syntax_error(f"invalid number '{literal}'", start + 1, text)
            return float(body)
        else:
            value = int(body)
    except ValueError:  # more digits than Python converts
        raise _syntax_error(f"number '{literal[:20]}...' too large", start + 1, text) from None
    if value.bit_length() > MAX_INT_BITS:
        raise _syntax_error(f"number '{literal[:20]}...' too large", start + 1, text)
    if is_long:
        # Java's limits: 2^63 only stands for MinLong (after a minus sign),
        # a hexadecimal long is any 64-bit pattern (0xFFFFFFFFFFFFFFFFL is -1L).
        if value > (_LONG_MODULUS - 1 if is_hex else -_LONG_MIN):
            raise _syntax_error(f"number '{literal[:24]}' too large for a long", start + 1, text)
        return Long(value)
    return value


def _scan_string(text: str, start: int) -> tuple[str, int]:
    """The value of the string literal opening at C{text[start]}, and the offset after it."""
    parts = []
    position = start + 1
    while True:
        chunk = _STRING_CHUNK.match(text, position)
        parts.append(chunk.group())
        position = chunk.end()
        if position >= len(text):
            raise _syntax_error("unterminated string", start + 1, text)
        if text[position] == '"':
            return "".join(parts), position + 1
        if position + 1 >= len(text):
            raise _syntax_error("unterminated string", start + 1, text)
        escape = text[position + 1]
        if escape not in _ESCAPES:
            raise _syntax_error(f"invalid escape '\\{escape}' in string", position + 1, text)
        parts.append(_ESCAPES[escape])
        position += 2


# ---------------------------------------------------------------------------
# Parser

_PRECEDENCE = {
    "?": 0, "||": 1, "&&": 2, "|": 3, "#": 4, "&": 5, "==": 6, "!=": 6,
    "<": 7, "<=": 7, ">": 7, ">=": 7, "<<": 8, ">>": 8, ">>>": 8,
    "+": 9, "-": 9, "*": 10, "/": 10, "%": 10,
}
_PREFIX = ("-", "!", "~")


class _Parser:
    """
    Recursive descent over the token list.  Every recursion goes through
    L{_nested}, which bounds it by L{MAX_DEPTH}; each level costs at most
    three Python frames, so the parser stays far from Python's recursion limit.
    """

    def __init__(self, text: str) -> None:
        self._text = text
        self._tokens = _tokenize(text)
        self._index = 0
        self._depth = 0

    def parse(self) -> Node:
        if self._peek().kind == "end":
            raise ExpressionError("empty expression")
        node = self._expression(0)
        if self._peek().kind != "end":
            raise self._unexpected()
        return node

    def _expression(self, min_precedence: int) -> Node:
        left = self._operand()
        while True:
            token = self._peek()
            precedence = _PRECEDENCE.get(token.text) if token.kind == "op" else None
            if precedence is None or precedence < min_precedence:
                return left
            self._next()
            with self._nested():
                if token.text == "?":
                    then = self._expression(0)
                    self._expect(":")
                    left = Conditional(left, then, self._expression(0))
                else:
                    left = Binary(token.text, left, self._expression(precedence + 1))

    def _operand(self) -> Node:
        token = self._peek()
        if token.kind == "op" and token.text in _PREFIX:
            self._next()
            with self._nested():
                return Unary(token.text, self._operand())
        node = self._braces() if self._at("{") else self._primary()
        while True:
            if self._at("("):
                args = self._arguments()
                node = Call(node.name, args) if isinstance(node, Name) else Index(node, args)
            elif self._at("."):
                self._next()
                if self._peek().kind != "name":
                    raise self._unexpected("expected a name after '.'")
                name = self._next().text
                node = Method(node, name, self._arguments()) if self._at("(") else Field(node, name)
            elif self._at("^"):
                self._next()
                with self._nested():
                    return Binary("^", node, self._operand())
            else:
                return node

    def _primary(self) -> Node:
        token = self._peek()
        if token.kind in ("number", "string"):
            self._next()
            return Literal(token.value)
        if token.kind == "name":
            self._next()
            if token.text in ("true", "false"):
                return Literal(token.text == "true")
            return Name(token.text)
        if self._at("("):
            self._next()
            with self._nested():
                node = self._expression(0)
            self._expect(")")
            return node
        raise self._unexpected()

    def _arguments(self) -> tuple[Node, ...]:
        self._expect("(")
        args: list[Node] = []
        with self._nested():
            while self._another(")", len(args)):
                args.append(self._expression(0))
        self._expect(")")
        return tuple(args)

    def _another(self, close: str, count: int) -> bool:
        """Whether item C{count} of a list separated by commas and ended by C{close} follows."""
        if count == 0:
            return not self._at(close)
        if self._at(","):
            self._next()
            return True
        if self._at(close):
            return False
        raise self._unexpected(f"expected ',' or '{close}'")

    def _braces(self) -> Node:
        """An array C{{1, 2}} or a record C{{a = 1, b = 2}}; C{{}} is the empty array."""
        self._expect("{")
        is_record = self._at_label()
        items: list[Node] = []
        fields: dict[str, Node] = {}
        with self._nested():
            while self._another("}", len(items) + len(fields)):
                if not is_record:
                    items.append(self._expression(0))
                    continue
                if not self._at_label():
                    raise self._unexpected("expected 'name = value'")
                label = self._next()
                name = label.value if label.kind == "string" else label.text
                if name in fields:
                    raise _syntax_error(f"duplicate field '{name}'", label.column, self._text)
                self._expect("=")
                fields[name] = self._expression(0)
        self._expect("}")
        return RecordLiteral(tuple(fields.items())) if is_record else ArrayLiteral(tuple(items))

    @contextmanager
    def _nested(self) -> Iterator[None]:
        self._depth += 1
        if self._depth > MAX_DEPTH:
            raise _syntax_error(f"expression nested too deeply (more than {MAX_DEPTH} levels)",
                                self._peek().column, self._text)
        try:
            yield
        finally:
            self._depth -= 1

    def _peek(self) -> _Token:
        return self._tokens[self._index]

    def _next(self) -> _Token:
        token = self._tokens[self._index]
        if token.kind != "end":
            self._index += 1
        return token

    def _at(self, op: str) -> bool:
        token = self._peek()
        return token.kind == "op" and token.text == op

    def _at_label(self) -> bool:
        label = self._tokens[self._index]
        after = self._tokens[min(self._index + 1, len(self._tokens) - 1)]
        return label.kind in ("name", "string") and after.kind == "op" and after.text == "="

    def _expect(self, op: str) -> _Token:
        if not self._at(op):
            raise self._unexpected(f"expected '{op}'")
        return self._next()

    def _unexpected(self, expected: str | None = None) -> ExpressionError:
        token = self._peek()
        found = "end of input" if token.kind == "end" else f"'{token.text}'"
        what = f"unexpected {found}" if expected is None else f"{expected} but found {found}"
        return _syntax_error(what, token.column, self._text)


# ---------------------------------------------------------------------------
# Public entry points


def parse(text: str) -> Node:
    """The AST of expression C{text}; raises L{ExpressionError} for bad syntax."""
    if not isinstance(text, str):
        raise ExpressionError(f"an expression must be a string, not {type(text).__name__}")
    if len(text) > MAX_LENGTH:
        raise ExpressionError(f"expression too long: {len(text)} characters "
                              f"(the limit is {MAX_LENGTH})")
    try:
        node = _Parser(text).parse()
    except RecursionError:
        raise ExpressionError("expression nested too deeply") from None
    _check_depth(node)
    return node


def evaluate(node: Node, lookup: Callable[[str], Any]) -> Any:
    """
    The value of C{node}.  C{lookup(name)} gives the value of a name or
    raises KeyError; an L{ExpressionError} (or any other exception) it
    raises passes through.
    """
    try:
        return _Evaluator(lookup).eval(node)
    except RecursionError:
        raise ExpressionError("expression or value nested too deeply") from None


def _no_names(name: str) -> Any:
    raise KeyError(name)


def evaluate_text(text: str, lookup: Callable[[str], Any] = _no_names) -> Any:
    """Parse and evaluate C{text}."""
    return evaluate(parse(text), lookup)


def parse_value(text: str) -> Any:
    """A parameter value as written in MoML: an expression that names no identifiers but constants."""
    node = parse(text)
    names = identifiers(node) - CONSTANTS.keys()
    if names:
        raise ExpressionError(f"unknown identifier '{min(names)}' "
                              "(a parameter value cannot refer to names)")
    return evaluate(node, _no_names)


def to_string(value: Any) -> str:
    """Ptolemy's token toString(): C{"a\\"b"}, C{3}, C{1.0}, C{true}, C{{1, 2}}, C{{a=1}}, C{500L}."""
    try:
        text = _format(value, MAX_SIZE)
    except RecursionError:
        raise ExpressionError("value nested too deeply") from None
    if text is None:
        raise _too_large("string")
    return text


def display(value: Any) -> str:
    """How Ptolemy's Display actor shows a value: as L{to_string}, but a string without quotes."""
    return value if isinstance(value, str) else to_string(value)


# ---------------------------------------------------------------------------
# Formatting

_IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_QUOTE_TABLE = str.maketrans({'"': '\\"', "\\": "\\\\", "\n": "\\n", "\t": "\\t", "\r": "\\r"})


class _TooLong(Exception):
    """The text of a value would exceed the limit given to L{_format}."""


def _format(value: Any, limit: int) -> str | None:
    """The text of C{value}, or None if it would be longer than C{limit} characters."""
    writer = _Writer(limit)
    try:
        writer.value(value)
    except _TooLong:
        return None
    return "".join(writer.parts)


class _Writer:
    """Builds a value's text, stopping with L{_TooLong} beyond C{limit} characters."""

    def __init__(self, limit: int) -> None:
        self.parts: list[str] = []
        self._size = 0
        self._limit = limit

    def write(self, text: str) -> None:
        self._size += len(text)
        if self._size > self._limit:
            raise _TooLong()
        self.parts.append(text)

    def value(self, value: Any) -> None:
        if isinstance(value, str):
            self.write(_quote(value))
        elif isinstance(value, list):
            self.write("{")
            for i, item in enumerate(value):
                self.write(", " if i else "")
                self.value(item)
            self.write("}")
        elif isinstance(value, dict):
            self.write("{")
            for i, label in enumerate(_labels(value)):
                self.write(", " if i else "")
                self.write((label if _IDENTIFIER.fullmatch(label) else _quote(label)) + "=")
                self.value(value[label])
            self.write("}")
        else:
            self.write(_scalar_text(value))


def _quote(text: str) -> str:
    return '"' + text.translate(_QUOTE_TABLE) + '"'


def _labels(record: dict) -> list[str]:
    if not all(isinstance(label, str) for label in record):
        raise ExpressionError("record labels must be strings")
    return sorted(record)


def _scalar_text(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        if value.bit_length() > MAX_INT_BITS:
            raise ExpressionError(f"integer of {value.bit_length()} bits too large to convert to text")
        return f"{int(value)}L" if isinstance(value, Long) else str(int(value))
    if isinstance(value, float):
        return _format_double(value)
    raise ExpressionError(f"cannot convert {_type_name(value)} to text")


def _format_double(value: float) -> str:
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "Infinity" if value > 0 else "-Infinity"
    text = repr(value)
    return text if "." in text or "e" in text else text + ".0"


def _type_name(value: Any) -> str:
    for kind, name in _TYPE_NAMES:
        if isinstance(value, kind):
            return name
    return "an unsupported value" if value is not None else "an empty value"


_TYPE_NAMES = ((bool, "boolean"), (Long, "long"), (int, "int"), (float, "double"),
               (str, "string"), (list, "array"), (dict, "record"))


# ---------------------------------------------------------------------------
# Evaluator


class _Budget:
    """What one evaluation may still produce or visit (elements, characters, 64-bit words)."""

    def __init__(self, limit: int) -> None:
        self.left = limit

    def charge(self, amount: int) -> None:
        self.left -= amount
        if self.left < 0:
            raise self.exhausted()

    def exhausted(self) -> ExpressionError:
        return ExpressionError(f"expression too expensive (it would produce or visit more than "
                               f"{MAX_WORK} elements)")


_MISSING = object()


class _Evaluator:
    """Walks an AST; each AST level costs at most two Python frames."""

    def __init__(self, lookup: Callable[[str], Any]) -> None:
        self._lookup = lookup
        self.budget = _Budget(MAX_WORK)

    def eval(self, node: Node) -> Any:
        match node:
            case Literal(value=value):
                return value
            case Name(name=name):
                return self._name(name)
            case Binary(op="&&" | "||" as op, left=left, right=right):
                return self._logical(op, left, right)
            case Binary(op=op, left=left, right=right):
                return _binary(op, self.eval(left), self.eval(right), self.budget)
            case Unary(op=op, operand=operand):
                return _unary(op, self.eval(operand), self.budget)
            case Conditional(test=test, then=then, otherwise=otherwise):
                condition = _require_boolean(self.eval(test), "?:")
                return self.eval(then if condition else otherwise)
            case ArrayLiteral(items=items):
                self.budget.charge(len(items))
                return _unify(self._values(items))
            case RecordLiteral(fields=fields):
                return self._record(fields)
            case Call(name=name, args=args):
                target = self._callee(name)
                return self._apply(name, target, self._values(args))
            case Index(target=target, args=args):
                return _index(self.eval(target), self._values(args))
            case Method(target=target, name=name, args=args):
                return _method(self.eval(target), name, self._values(args), self.budget)
            case Field(target=target, name=name):
                return _field(self.eval(target), name)
        raise ExpressionError(f"not an expression node: {type(node).__name__}")

    def _values(self, nodes: tuple[Node, ...]) -> list[Any]:
        values = []
        for node in nodes:
            values.append(self.eval(node))
        return values

    def _record(self, fields: tuple[tuple[str, Node], ...]) -> dict[str, Any]:
        record = {}
        for label, node in fields:
            record[label] = self.eval(node)
        return record

    def _name(self, name: str) -> Any:
        try:
            return self._lookup(name)
        except KeyError:
            pass
        if name in CONSTANTS:
            return CONSTANTS[name]
        raise ExpressionError(f"unknown identifier '{name}'")

    def _callee(self, name: str) -> Any:
        """The value named C{name}, else the built-in function, for C{name(args)}."""
        try:
            return self._lookup(name)
        except KeyError:
            pass
        if name in _FUNCTIONS:
            return _MISSING
        raise ExpressionError(f"unknown function '{name}'")

    def _apply(self, name: str, target: Any, args: list[Any]) -> Any:
        if target is not _MISSING:
            return _index(target, args)
        function = _FUNCTIONS[name]
        function.check_arity(f"function '{name}'", len(args))
        return function.impl(self.budget, *args)

    def _logical(self, op: str, left: Node, right: Node) -> bool:
        value = _require_boolean(self.eval(left), op)
        if value == (op == "||"):  # false && ..., true || ...
            return value
        return _require_boolean(self.eval(right), op)


# ---------------------------------------------------------------------------
# Type checks and conversions


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _is_integer(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _require_boolean(value: Any, what: str) -> bool:
    if not isinstance(value, bool):
        raise ExpressionError(f"'{what}' requires boolean operands, got {_type_name(value)}")
    return value


def _require_number(value: Any, what: str) -> int | float:
    if not _is_number(value):
        raise ExpressionError(f"'{what}' requires a number, got {_type_name(value)}")
    return value


def _require_integer(value: Any, what: str) -> int:
    if not _is_integer(value):
        raise ExpressionError(f"'{what}' requires an integer, got {_type_name(value)}")
    return value


def _require_string(value: Any, what: str) -> str:
    if not isinstance(value, str):
        raise ExpressionError(f"'{what}' requires a string, got {_type_name(value)}")
    return value


def _require_array(value: Any, what: str) -> list:
    if not isinstance(value, list):
        raise ExpressionError(f"'{what}' requires an array, got {_type_name(value)}")
    return value


def _result_kind(*values: int | float) -> type:
    """float if any value is a float, else Long if any is a Long, else int."""
    if any(isinstance(value, float) for value in values):
        return float
    return Long if any(isinstance(value, Long) for value in values) else int


def _convert(value: int | float, kind: type) -> int | float:
    if kind is float:
        return _to_float(value)
    return Long(value) if kind is Long else int(value)


def _to_float(value: int | float) -> float:
    try:
        return float(value)
    except OverflowError:
        raise ExpressionError("integer too large to convert to double") from None


def _truncate(value: int | float, what: str) -> int:
    if isinstance(value, float):
        if not math.isfinite(value):
            raise ExpressionError(f"'{what}' cannot convert {_format_double(value)} to an integer")
        return int(value)
    return int(value)


def _check_int(value: int) -> int:
    if value.bit_length() > MAX_INT_BITS:
        raise _int_too_large()
    return value


def _int_too_large() -> ExpressionError:
    return ExpressionError(f"integer result too large (more than {MAX_INT_BITS} bits)")


def _too_large(kind: str) -> ExpressionError:
    unit = "characters" if kind == "string" else "elements"
    return ExpressionError(f"{kind} result too large (more than {MAX_SIZE} {unit})")


def _check_size(size: int, kind: str, budget: _Budget) -> None:
    if size > MAX_SIZE:
        raise _too_large(kind)
    budget.charge(size)


def _deep_size(value: Any, limit: int) -> int:
    """Elements and characters in C{value}, counting shared parts each time; stops beyond C{limit}."""
    size = 0
    stack = [value]
    while stack and size <= limit:
        item = stack.pop()
        size += max(1, len(item)) if isinstance(item, str) else 1
        if isinstance(item, (list, dict)):
            if size + len(item) > limit:
                return limit + 1
            stack.extend(item.values() if isinstance(item, dict) else item)
    return size


def _unify(items: list[Any]) -> list[Any]:
    """Ptolemy arrays hold one type: {1, 2.5} is {1.0, 2.5}, {1, 2L} is {1L, 2L}."""
    if items and all(_is_number(item) for item in items):
        kind = _result_kind(*items)
        if kind is not int:
            return [_convert(item, kind) for item in items]
    return items


def _text(value: Any, budget: _Budget) -> str:
    """A string as it is, any other value as L{to_string} gives it."""
    return value if isinstance(value, str) else _to_string(budget, value)


# ---------------------------------------------------------------------------
# Operators


def _binary(op: str, left: Any, right: Any, budget: _Budget) -> Any:
    if op in _ARITHMETIC:
        return _arithmetic(op, left, right, budget)
    if op in ("==", "!="):
        return _equal(left, right, budget) == (op == "==")
    if op in _ORDERING:
        return _compare(op, left, right)
    if op in _SHIFTS:
        return _shift(op, left, right)
    return _bitwise(op, left, right)


def _arithmetic(op: str, left: Any, right: Any, budget: _Budget) -> Any:
    if op == "+" and (isinstance(left, str) or isinstance(right, str)):
        left_text, right_text = _text(left, budget), _text(right, budget)
        _check_size(len(left_text) + len(right_text), "string", budget)
        return left_text + right_text
    if isinstance(left, list) or isinstance(right, list):
        return _elementwise(op, left, right, budget)
    if not (_is_number(left) and _is_number(right)):
        raise ExpressionError(f"'{op}' cannot be applied to {_type_name(left)} and {_type_name(right)}")
    kind = _result_kind(left, right)
    if kind is float or (op == "^" and right < 0):
        return _FLOAT_ARITHMETIC[op](_to_float(left), _to_float(right))
    if kind is Long and op == "^":  # repeated 64-bit multiplication, as in Ptolemy
        return Long(pow(int(left), int(right), _LONG_MODULUS))
    result = _check_int(_INT_ARITHMETIC[op](int(left), int(right)))
    budget.charge(result.bit_length() // 64)
    return Long(result) if kind is Long else result


def _elementwise(op: str, left: Any, right: Any, budget: _Budget) -> list[Any]:
    if isinstance(left, list) and isinstance(right, list):
        if len(left) != len(right):
            raise ExpressionError(f"'{op}' on arrays of different lengths ({len(left)} and {len(right)})")
        pairs: Any = zip(left, right)
    elif isinstance(left, list):
        pairs = ((item, right) for item in left)
    else:
        pairs = ((left, item) for item in right)
    budget.charge(len(left) if isinstance(left, list) else len(right))
    return [_arithmetic(op, a, b, budget) for a, b in pairs]


def _int_divide(left: int, right: int) -> int:
    """Java's integer division: truncates toward zero."""
    if right == 0:
        raise ExpressionError("division by zero")
    quotient = abs(left) // abs(right)
    return quotient if (left < 0) == (right < 0) else -quotient


def _int_remainder(left: int, right: int) -> int:
    """Java's %: the sign of the dividend."""
    return left - right * _int_divide(left, right)


def _int_power(base: int, exponent: int) -> int:
    if abs(base) > 1 and (abs(base).bit_length() - 1) * exponent >= MAX_INT_BITS:
        raise _int_too_large()
    return base**exponent


def _float_divide(left: float, right: float) -> float:
    """Java's double division: x/0.0 is an infinity, 0.0/0.0 is NaN."""
    if right == 0.0:
        if left == 0.0 or math.isnan(left):
            return math.nan
        return math.copysign(math.inf, left) * math.copysign(1.0, right)
    return left / right


def _float_remainder(left: float, right: float) -> float:
    try:
        return math.fmod(left, right)
    except ValueError:  # x % 0.0, Infinity % x
        return math.nan


def _float_power(base: float, exponent: float) -> float:
    """Java's Math.pow: overflow gives an infinity, an undefined result NaN."""
    odd = exponent.is_integer() and exponent % 2 == 1
    try:
        return math.pow(base, exponent)
    except OverflowError:
        return -math.inf if base < 0 and odd else math.inf
    except ValueError:  # 0.0 ^ negative, negative ^ fraction
        if base == 0.0:
            return -math.inf if odd and math.copysign(1.0, base) < 0 else math.inf
        return math.nan


_INT_ARITHMETIC: Mapping[str, Callable[[int, int], int]] = MappingProxyType({
    "+": operator.add, "-": operator.sub, "*": operator.mul,
    "/": _int_divide, "%": _int_remainder, "^": _int_power,
})
_FLOAT_ARITHMETIC: Mapping[str, Callable[[float, float], float]] = MappingProxyType({
    "+": operator.add, "-": operator.sub, "*": operator.mul,
    "/": _float_divide, "%": _float_remainder, "^": _float_power,
})
_ARITHMETIC = frozenset(_INT_ARITHMETIC)
_ORDERING: Mapping[str, Callable[[Any, Any], bool]] = MappingProxyType({
    "<": operator.lt, "<=": operator.le, ">": operator.gt, ">=": operator.ge,
})
_SHIFTS = frozenset(("<<", ">>", ">>>"))
_BITWISE: Mapping[str, Callable[[Any, Any], Any]] = MappingProxyType({
    "&": operator.and_, "|": operator.or_, "#": operator.xor,
})


def _equal(left: Any, right: Any, budget: _Budget) -> bool:
    """Deep equality; numbers compare by value (1 == 1.0), booleans only with booleans."""
    budget.charge(1)
    if isinstance(left, bool) or isinstance(right, bool):
        return isinstance(left, bool) and isinstance(right, bool) and left == right
    if _is_number(left) and _is_number(right):
        return left == right
    if isinstance(left, str) and isinstance(right, str):
        return left == right
    if isinstance(left, list) and isinstance(right, list):
        return len(left) == len(right) and all(_equal(a, b, budget) for a, b in zip(left, right))
    if isinstance(left, dict) and isinstance(right, dict):
        return left.keys() == right.keys() and all(_equal(left[k], right[k], budget) for k in left)
    return False


def _compare(op: str, left: Any, right: Any) -> bool:
    both_strings = isinstance(left, str) and isinstance(right, str)
    if both_strings or (_is_number(left) and _is_number(right)):
        return _ORDERING[op](left, right)
    raise ExpressionError(f"'{op}' requires two numbers or two strings, "
                          f"got {_type_name(left)} and {_type_name(right)}")


def _shift(op: str, value: Any, count: Any) -> int:
    if not (_is_integer(value) and _is_integer(count)):
        raise ExpressionError(f"'{op}' requires integers, "
                              f"got {_type_name(value)} and {_type_name(count)}")
    if count < 0:
        raise ExpressionError(f"'{op}' requires a non-negative shift count, got {count}")
    number = int(value)
    if isinstance(value, Long):  # Java takes a long's shift count modulo 64
        count = int(count) % LONG_BITS
    if op == "<<":
        if number and number.bit_length() + count > MAX_INT_BITS:
            raise _int_too_large()
        result = number << count
    else:
        if op == ">>>" and number < 0:  # as an unsigned 32-bit int or 64-bit long
            number &= (1 << (LONG_BITS if isinstance(value, Long) else 32)) - 1
        result = number >> min(count, number.bit_length() + 1)
    return _convert(result, _result_kind(value, count))


def _bitwise(op: str, left: Any, right: Any) -> Any:
    if isinstance(left, bool) and isinstance(right, bool):
        return _BITWISE[op](left, right)
    if _is_integer(left) and _is_integer(right):
        return _convert(_BITWISE[op](int(left), int(right)), _result_kind(left, right))
    raise ExpressionError(f"'{op}' requires two integers or two booleans, "
                          f"got {_type_name(left)} and {_type_name(right)}")


def _unary(op: str, value: Any, budget: _Budget) -> Any:
    if op == "!":
        return not _require_boolean(value, "!")
    if op == "~":
        if isinstance(value, bool):
            return not value
        return _convert(~_require_integer(value, "~"), _result_kind(value))
    if isinstance(value, list):
        budget.charge(len(value))
        return [_unary(op, item, budget) for item in value]
    return _convert(-_require_number(value, "-"), _result_kind(value))


def _index(target: Any, args: list[Any]) -> Any:
    if not isinstance(target, list):
        raise ExpressionError(f"cannot call or index {_type_name(target)}")
    if len(args) != 1:
        raise ExpressionError(f"an array index takes one argument ({len(args)} given)")
    index = args[0]
    if not _is_integer(index):
        raise ExpressionError(f"an array index must be an integer, got {_type_name(index)}")
    if not 0 <= index < len(target):
        raise ExpressionError(f"array index {index} out of range for an array of length {len(target)}")
    return target[index]


def _field(target: Any, name: str) -> Any:
    if not isinstance(target, dict):
        raise ExpressionError(f"unknown field '{name}' of {_type_name(target)}")
    if name not in target:
        raise ExpressionError(f"record has no field '{name}'")
    return target[name]


def _method(target: Any, name: str, args: list[Any], budget: _Budget) -> Any:
    if isinstance(target, dict) and name in target:  # rec.arr(0)
        return _index(target[name], args)
    if isinstance(target, str):
        method = _STRING_METHODS.get(name)
    elif isinstance(target, list):
        method = _ARRAY_METHODS.get(name)
    else:
        method = None
    method = method or _VALUE_METHODS.get(name)
    if method is None:
        raise ExpressionError(f"unknown method '{name}' of {_type_name(target)}")
    method.check_arity(f"method '{name}'", len(args))
    return method.impl(budget, target, *args)


# ---------------------------------------------------------------------------
# Functions and methods


@attrs.frozen
class _Builtin:
    """A function (impl(budget, *args)) or method (impl(budget, receiver, *args))."""

    min_args: int
    max_args: int
    impl: Callable[..., Any]

    def check_arity(self, what: str, count: int) -> None:
        if self.min_args <= count <= self.max_args:
            return
        expected = (str(self.min_args) if self.min_args == self.max_args
                    else f"{self.min_args} to {self.max_args}")
        plural = "" if expected == "1" else "s"
        raise ExpressionError(f"{what} takes {expected} argument{plural} ({count} given)")


def _map_numbers(name: str, value: Any, budget: _Budget, scalar: Callable[[Any], Any]) -> Any:
    """C{scalar(value)} for a number, elementwise for an array."""
    if isinstance(value, list):
        budget.charge(len(value))
        return [_map_numbers(name, item, budget, scalar) for item in value]
    return scalar(_require_number(value, name))


def _java_math(function: Callable[[float], float]) -> Callable[[float], float]:
    """C{function} with Java's Math results where Python raises: NaN, or an infinity."""

    def apply(x: float) -> float:
        try:
            return function(x)
        except OverflowError:  # exp, cosh, sinh
            return math.copysign(math.inf, x) if function is math.sinh else math.inf
        except ValueError:  # outside the domain
            return -math.inf if x == 0.0 and function in (math.log, math.log10) else math.nan

    return apply


def _float_function(name: str, function: Callable[[float], float]) -> _Builtin:
    java = _java_math(function)

    def impl(budget: _Budget, x: Any) -> Any:
        return _map_numbers(name, x, budget, lambda value: java(_to_float(value)))

    return _Builtin(1, 1, impl)


def _rounding_function(name: str, function: Callable[[float], int]) -> _Builtin:
    def scalar(value: int | float) -> float:
        value = _to_float(value)
        return float(function(value)) if math.isfinite(value) else value

    return _Builtin(1, 1, lambda budget, x: _map_numbers(name, x, budget, scalar))


def _round(value: int | float) -> int:
    """Round half away from zero, to an int."""
    if _is_integer(value):
        return value
    whole = _truncate(abs(value), "round")
    if abs(value) - whole >= 0.5:
        whole += 1
    return whole if value >= 0 else -whole


def _abs(value: int | float) -> int | float:
    return _convert(abs(value), _result_kind(value))


def _extremum(name: str, pick: Callable[..., Any]) -> _Builtin:
    def impl(budget: _Budget, *args: Any) -> int | float:
        values = _require_array(args[0], name) if len(args) == 1 else list(args)
        if not values:
            raise ExpressionError(f"'{name}' of an empty array")
        budget.charge(len(values))
        for value in values:
            _require_number(value, name)
        kind = _result_kind(*values)
        if kind is float and any(isinstance(v, float) and math.isnan(v) for v in values):
            return math.nan
        return _convert(pick(values), kind)

    return _Builtin(1, 2, impl)


def _sum(budget: _Budget, array: Any) -> Any:
    items = iter(_require_array(array, "sum"))
    total = next(items, 0)
    for item in items:
        total = _arithmetic("+", total, item, budget)
    return total


def _length(budget: _Budget, value: Any) -> int:
    if not isinstance(value, (str, list)):
        raise ExpressionError(f"'length' requires an array or a string, got {_type_name(value)}")
    return len(value)


def _to_int(budget: _Budget, value: Any) -> int:
    return _truncate(_require_number(value, "int"), "int")


def _to_long(budget: _Budget, value: Any) -> Long:
    number = _truncate(_require_number(value, "long"), "long")
    if isinstance(value, float):  # Java's (long) of a double saturates
        number = min(max(number, _LONG_MIN), _LONG_MAX)
    return Long(number)


def _to_double(budget: _Budget, value: Any) -> float:
    return _to_float(_require_number(value, "double"))


def _to_string(budget: _Budget, value: Any) -> str:
    text = _format(value, min(MAX_SIZE, budget.left))
    if text is None:
        raise _too_large("string") if budget.left >= MAX_SIZE else budget.exhausted()
    budget.charge(len(text))
    return text


_INTEGER_TEXT = re.compile(r"[+-]?[0-9A-Za-z]+")
_DOUBLE_TEXT = re.compile(
    r"[+-]?(?:NaN|Infinity|(?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:[eE][+-]?[0-9]+)?[dDfF]?)")
_JAVA_SPACE = "".join(map(chr, range(33)))  # what Java's trim() removes


def _short(text: str) -> str:
    return _quote(text if len(text) <= 40 else text[:40] + "...")


def _parse_int(budget: _Budget, text: Any, radix: Any = 10) -> int:
    _require_string(text, "parseInt")
    if not (_is_integer(radix) and 2 <= radix <= 36):
        raise ExpressionError(f"'parseInt' requires a radix from 2 to 36, got {to_string(radix)}")
    if len(text) <= 4000 and _INTEGER_TEXT.fullmatch(text):
        try:
            return _check_int(int(text, radix))
        except ValueError:
            pass
    raise ExpressionError(f"'parseInt' cannot parse {_short(text)} as an integer")


def _parse_double(budget: _Budget, text: Any) -> float:
    text = _require_string(text, "parseDouble").strip(_JAVA_SPACE)
    if len(text) > MAX_LENGTH or not _DOUBLE_TEXT.fullmatch(text):
        raise ExpressionError(f"'parseDouble' cannot parse {_short(text)} as a number")
    return float(text.rstrip("dDfF"))


def _repeat(budget: _Budget, count: Any, value: Any) -> list[Any]:
    if not _is_integer(count) or count < 0:
        raise ExpressionError(f"'repeat' requires a non-negative integer count, "
                              f"got {_type_name(count)}")
    if count > MAX_SIZE or (count and count * _deep_size(value, MAX_SIZE // count) > MAX_SIZE):
        raise _too_large("array")
    budget.charge(count)
    return [value] * count


def _concatenate(budget: _Budget, *args: Any) -> list[Any]:
    arrays = _require_array(args[0], "concatenate") if len(args) == 1 else args
    for array in arrays:
        _require_array(array, "concatenate")
    _check_size(sum(len(array) for array in arrays), "array", budget)
    result: list[Any] = []
    for array in arrays:
        result.extend(array)
    return result


def _subarray(budget: _Budget, array: Any, start: Any, length: Any) -> list[Any]:
    _require_array(array, "subarray")
    if not (_is_integer(start) and _is_integer(length) and start >= 0 and length >= 0):
        raise ExpressionError("'subarray' requires a non-negative start and length")
    result = array[start:start + length]
    budget.charge(len(result))
    return result


def _is_nan(budget: _Budget, value: Any) -> bool:
    return isinstance(_require_number(value, "isNaN"), float) and math.isnan(value)


def _is_infinite(budget: _Budget, value: Any) -> bool:
    return isinstance(_require_number(value, "isInfinite"), float) and math.isinf(value)


_FUNCTIONS: Mapping[str, _Builtin] = MappingProxyType({
    **{name: _float_function(name, function) for name, function in {
        "acos": math.acos, "asin": math.asin, "atan": math.atan, "cos": math.cos,
        "cosh": math.cosh, "exp": math.exp, "log": math.log, "log10": math.log10,
        "sin": math.sin, "sinh": math.sinh, "sqrt": math.sqrt, "tan": math.tan,
        "tanh": math.tanh,
    }.items()},
    "ceil": _rounding_function("ceil", math.ceil),
    "floor": _rounding_function("floor", math.floor),
    "round": _Builtin(1, 1, lambda budget, x: _map_numbers("round", x, budget, _round)),
    "abs": _Builtin(1, 1, lambda budget, x: _map_numbers("abs", x, budget, _abs)),
    "atan2": _Builtin(2, 2, lambda budget, y, x: math.atan2(
        _to_float(_require_number(y, "atan2")), _to_float(_require_number(x, "atan2")))),
    "pow": _Builtin(2, 2, lambda budget, x, y: _float_power(
        _to_float(_require_number(x, "pow")), _to_float(_require_number(y, "pow")))),
    "max": _extremum("max", max),
    "min": _extremum("min", min),
    "sum": _Builtin(1, 1, _sum),
    "length": _Builtin(1, 1, _length),
    "int": _Builtin(1, 1, _to_int),
    "long": _Builtin(1, 1, _to_long),
    "double": _Builtin(1, 1, _to_double),
    "toString": _Builtin(1, 1, _to_string),
    "parseInt": _Builtin(1, 2, _parse_int),
    "parseDouble": _Builtin(1, 1, _parse_double),
    "repeat": _Builtin(2, 2, _repeat),
    "concatenate": _Builtin(1, 2, _concatenate),
    "subarray": _Builtin(3, 3, _subarray),
    "isNaN": _Builtin(1, 1, _is_nan),
    "isInfinite": _Builtin(1, 1, _is_infinite),
})
FUNCTION_NAMES: frozenset[str] = frozenset(_FUNCTIONS)


def _string_result(budget: _Budget, text: str) -> str:
    _check_size(len(text), "string", budget)
    return text


def _substring(budget: _Budget, text: str, begin: Any, end: Any = None) -> str:
    end = len(text) if end is None else _require_integer(end, "substring")
    if not (0 <= _require_integer(begin, "substring") <= end <= len(text)):
        raise ExpressionError(f"substring({begin}, {end}) out of range "
                              f"for a string of length {len(text)}")
    return _string_result(budget, text[begin:end])


def _index_of(budget: _Budget, text: str, part: Any, start: Any = 0) -> int:
    _require_string(part, "indexOf")
    return text.find(part, max(0, _require_integer(start, "indexOf")))


def _regex(text: str, pattern: Any, what: str) -> re.Pattern[str]:
    _require_string(pattern, what)
    if len(pattern) > MAX_PATTERN_LENGTH:
        raise ExpressionError(f"'{what}' pattern longer than {MAX_PATTERN_LENGTH} characters")
    if len(text) > MAX_LENGTH:
        raise ExpressionError(f"'{what}' on a string longer than {MAX_LENGTH} characters")
    try:
        return re.compile(pattern)
    except (re.error, OverflowError, RecursionError) as e:
        raise ExpressionError(f"'{what}': invalid regular expression {_short(pattern)}: {e}") from None


def _replacement(replacement: Any, groups: int) -> list[str | int]:
    """Java's replacement syntax: $n is group n, a backslash quotes the next character."""
    _require_string(replacement, "replaceAll")
    if len(replacement) > MAX_LENGTH:
        raise ExpressionError(f"'replaceAll' replacement longer than {MAX_LENGTH} characters")
    parts: list[str | int] = []
    literal: list[str] = []
    position = 0
    while position < len(replacement):
        char = replacement[position]
        if char == "\\":
            if position + 1 == len(replacement):
                raise ExpressionError("'replaceAll': replacement ends with a backslash")
            literal.append(replacement[position + 1])
            position += 2
        elif char == "$":
            digits = _DIGITS.match(replacement, position + 1)
            if digits is None:
                raise ExpressionError(f"'replaceAll': illegal group reference in {_short(replacement)}")
            number = digits.group()
            while len(number) > 1 and int(number) > groups:  # Java takes the longest valid number
                number = number[:-1]
            if int(number) > groups:
                raise ExpressionError(f"'replaceAll': no group {number} in the pattern")
            parts.extend(("".join(literal), int(number)))
            literal.clear()
            position += 1 + len(number)
        else:
            literal.append(char)
            position += 1
    parts.append("".join(literal))
    return parts


_DIGITS = re.compile(r"[0-9]+")


def _replace_all(budget: _Budget, text: str, pattern: Any, replacement: Any) -> str:
    regex = _regex(text, pattern, "replaceAll")
    parts = _replacement(replacement, regex.groups)
    pieces = []
    size = position = 0
    for match in regex.finditer(text):
        replaced = "".join(part if isinstance(part, str) else match.group(part) or ""
                           for part in parts)
        pieces.extend((text[position:match.start()], replaced))
        size += match.start() - position + len(replaced)
        if size > MAX_SIZE:
            raise _too_large("string")
        position = match.end()
    pieces.append(text[position:])
    return _string_result(budget, "".join(pieces))


def _split(budget: _Budget, text: str, pattern: Any) -> list[str]:
    """Java's String.split: no leading empty string for a zero-width match, no trailing ones."""
    regex = _regex(text, pattern, "split")
    pieces = []
    position = 0
    for match in regex.finditer(text):
        if match.end() == 0:
            continue
        pieces.append(text[position:match.start()])
        position = match.end()
    if not pieces:
        return [text]
    pieces.append(text[position:])
    while pieces and pieces[-1] == "":
        pieces.pop()
    budget.charge(len(text) + len(pieces))
    return pieces


def _string_test(what: str, test: Callable[[str, str], bool]) -> _Builtin:
    return _Builtin(1, 1, lambda budget, text, part: test(text, _require_string(part, what)))


_STRING_METHODS: Mapping[str, _Builtin] = MappingProxyType({
    "length": _Builtin(0, 0, lambda budget, text: len(text)),
    "toUpperCase": _Builtin(0, 0, lambda budget, text: _string_result(budget, text.upper())),
    "toLowerCase": _Builtin(0, 0, lambda budget, text: _string_result(budget, text.lower())),
    "trim": _Builtin(0, 0, lambda budget, text: _string_result(budget, text.strip(_JAVA_SPACE))),
    "substring": _Builtin(1, 2, _substring),
    "indexOf": _Builtin(1, 2, _index_of),
    "startsWith": _string_test("startsWith", str.startswith),
    "endsWith": _string_test("endsWith", str.endswith),
    "replaceAll": _Builtin(2, 2, _replace_all),
    "split": _Builtin(1, 1, _split),
})
_ARRAY_METHODS: Mapping[str, _Builtin] = MappingProxyType({
    "length": _Builtin(0, 0, lambda budget, array: len(array)),
})
_VALUE_METHODS: Mapping[str, _Builtin] = MappingProxyType({
    "toString": _Builtin(0, 0, _to_string),
})
