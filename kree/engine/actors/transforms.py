"""
Transformers: actors that compute outputs from inputs (Expression,
AddSubtract, MultiplyDivide, Scale, Accumulator, StringReplace, StringSplit,
StringJoin).

Arithmetic uses the expression language's own operators, so that an
AddSubtract adds exactly as C{a + b} does in an Expression (numbers widen,
strings concatenate, arrays work elementwise).
"""

from __future__ import annotations

import functools
import re
from typing import Any, Callable

from kree.engine import expression
from kree.engine.model import Actor, ParamSpec, PortSpec, StopRequested, WorkflowError

OUTPUT = PortSpec("output", output=True)
# Python errors that bad tokens can cause inside an operation; they become
# workflow failures instead of engine errors.
_DATA_ERRORS = (ArithmeticError, TypeError, ValueError, KeyError, IndexError, AttributeError,
                RecursionError)


@functools.lru_cache(maxsize=None)
def _parsed(text: str):
    return expression.parse(text)


def _evaluate(actor: Actor, text: str, values: dict[str, Any], what: str) -> Any:
    """C{text} (an operation on the names in C{values}), or the actor fails saying C{what}."""
    try:
        return expression.evaluate(_parsed(text), values.__getitem__)
    except (WorkflowError, StopRequested):
        raise
    except expression.ExpressionError as e:
        raise actor.fail(f"cannot compute {what}: {e}") from None
    except _DATA_ERRORS as e:
        raise actor.fail(f"cannot compute {what}: {type(e).__name__}: {e}") from None


def _binary(actor: Actor, op: str, left: Any, right: Any) -> Any:
    what = f"{expression.to_string(left)} {op} {expression.to_string(right)}"
    return _evaluate(actor, f"a {op} b", {"a": left, "b": right}, what)


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _has_int_zero(value: Any) -> bool:
    if isinstance(value, list):
        return any(_has_int_zero(v) for v in value)
    return _is_int(value) and value == 0


def _as_text(value: Any) -> str:
    """A token as a string port sees it (Ptolemy converts other types to their text)."""
    return value if isinstance(value, str) else expression.display(value)


def _bool_param(actor: Actor, name: str) -> bool:
    value = actor.param(name)
    if not isinstance(value, bool):
        raise actor.fail(f"{name} must be true or false, not {expression.to_string(value)}")
    return value


# -- Expression ----------------------------------------------------------------------


class Expression(Actor):
    """
    Evaluates an expression on each firing, with the tokens read from its
    input ports, and produces the result.

    Ports: the input ports declared in the workflow (each name stands for the
    token read from it; one token from every connected input per firing),
    output.
    Parameters: expression (string: the expression; besides the input names
    it may use the parameters in scope and iteration, the firing number
    counting from 1, and time, the model time, always 0.0 here).
    """

    class_name = "ptolemy.actor.lib.Expression"
    ports = (OUTPUT,)
    parameters = (ParamSpec("expression", "", string=True),)

    def initialize(self) -> None:
        super().initialize()
        self.text = self.param("expression")
        if not isinstance(self.text, str) or not self.text.strip():
            raise self.fail("the expression is empty")
        try:
            self.node = expression.parse(self.text)
        except expression.ExpressionError as e:
            raise self.fail(f"cannot parse the expression: {e}") from None
        self.iteration = 1

    def fire(self) -> None:
        tokens: dict[str, Any] = {}
        for port in self.inputs():
            if port.width:
                if not port.has_token(0):
                    raise self.fail(f"input {port.name} has no token")
                tokens[port.name] = port.get(0)

        def lookup(name: str) -> Any:
            if name in tokens:
                return tokens[name]
            if name == "iteration":
                return self.iteration
            if name == "time":
                return 0.0
            return self.scope.lookup(name)

        try:
            result = expression.evaluate(self.node, lookup)
        except (WorkflowError, StopRequested):
            raise
        except expression.ExpressionError as e:
            raise self.fail(f"expression {self.text!r}: {e}") from None
        except _DATA_ERRORS as e:
            raise self.fail(f"expression {self.text!r}: {type(e).__name__}: {e}") from None
        self.output("output").broadcast(result)

    def postfire(self) -> bool:
        self.iteration += 1
        return super().postfire()


# -- arithmetic ----------------------------------------------------------------------


class AddSubtract(Actor):
    """
    Adds the tokens on the plus channels and subtracts those on the minus
    channels (one token from each channel that has one).

    Ports: plus (input, multiport), minus (input, multiport), output.
    Numbers widen as in expressions (int + double is a double), strings
    concatenate, arrays add elementwise.  Nothing is produced when no
    channel has a token.
    """

    class_name = "ptolemy.actor.lib.AddSubtract"
    ports = (PortSpec("plus", input=True, multiport=True),
             PortSpec("minus", input=True, multiport=True), OUTPUT)

    def fire(self) -> None:
        plus, minus = self.input("plus"), self.input("minus")
        total: list[Any] = []  # empty until the first token
        for channel in range(plus.width):
            if plus.has_token(channel):
                value = plus.get(channel)
                total = [_binary(self, "+", total[0], value) if total else value]
        for channel in range(minus.width):
            if minus.has_token(channel):
                value = minus.get(channel)
                if total:
                    total = [_binary(self, "-", total[0], value)]
                else:
                    total = [_evaluate(self, "-a", {"a": value},
                                       f"-{expression.to_string(value)}")]
        if total:
            self.output("output").broadcast(total[0])


class MultiplyDivide(Actor):
    """
    Multiplies the tokens on the multiply channels and divides the product
    by the product of the tokens on the divide channels.

    Ports: multiply (input, multiport), divide (input, multiport), output.
    Integer division truncates toward zero, as in Ptolemy (7 / 2 is 3,
    -7 / 2 is -3); integer division by zero fails the run.  With only
    divide tokens the result is 1 divided by their product.
    """

    class_name = "ptolemy.actor.lib.MultiplyDivide"
    ports = (PortSpec("multiply", input=True, multiport=True),
             PortSpec("divide", input=True, multiport=True), OUTPUT)

    def fire(self) -> None:
        numerator = self._product(self.input("multiply"))
        denominator = self._product(self.input("divide"))
        if not numerator and not denominator:
            return
        if denominator:
            divisor = denominator[0]
            if _has_int_zero(divisor):
                top = expression.to_string(numerator[0]) if numerator else "1"
                raise self.fail(f"division by zero: {top} / {expression.to_string(divisor)}")
            if numerator:
                result = _binary(self, "/", numerator[0], divisor)
            else:
                result = _evaluate(self, "1 / a", {"a": divisor},
                                   f"1 / {expression.to_string(divisor)}")
        else:
            result = numerator[0]
        self.output("output").broadcast(result)

    def _product(self, port) -> list[Any]:
        product: list[Any] = []
        for channel in range(port.width):
            if port.has_token(channel):
                value = port.get(channel)
                product = [_binary(self, "*", product[0], value) if product else value]
        return product


class Scale(Actor):
    """
    Multiplies each input token by factor (arrays element by element).

    Ports: input, output.
    Parameters: factor (default 1), scaleOnLeft (default true: factor * input;
    false: input * factor).
    """

    class_name = "ptolemy.actor.lib.Scale"
    ports = (PortSpec("input", input=True), OUTPUT)
    parameters = (ParamSpec("factor", "1"), ParamSpec("scaleOnLeft", "true"))

    def initialize(self) -> None:
        super().initialize()
        _bool_param(self, "scaleOnLeft")
        if self.param("factor") is None:
            raise self.fail("factor is empty")

    def fire(self) -> None:
        port = self.input("input")
        if not port.has_token():
            return
        factor, on_left = self.param("factor"), _bool_param(self, "scaleOnLeft")
        self.output("output").broadcast(self._scale(port.get(), factor, on_left))

    def _scale(self, value: Any, factor: Any, on_left: bool) -> Any:
        if isinstance(value, list):
            return [self._scale(v, factor, on_left) for v in value]
        if on_left:
            return _binary(self, "*", factor, value)
        return _binary(self, "*", value, factor)


class Accumulator(Actor):
    """
    Produces the running sum of its inputs, starting from init: each output
    includes the tokens of the current firing.

    Ports: input (multiport: one token from each channel is added), reset
    (input, multiport, optional: a true token restarts the sum from init
    before adding the current input), output.
    Parameters: init (default 0), lowerBound and upperBound (optional
    numbers: the sum never goes beyond them).
    """

    class_name = "ptolemy.actor.lib.Accumulator"
    ports = (PortSpec("input", input=True, multiport=True),
             PortSpec("reset", input=True, multiport=True), OUTPUT)
    parameters = (ParamSpec("init", "0"), ParamSpec("lowerBound", ""),
                  ParamSpec("upperBound", ""))

    def initialize(self) -> None:
        super().initialize()
        self.sum = self.latest = self._init()
        for name in ("lowerBound", "upperBound"):
            self._bound(name)

    def _init(self) -> Any:
        value = self.param("init")
        if value is None:
            raise self.fail("init is empty")
        return value

    def _bound(self, name: str) -> Any:
        value = self.param(name)
        if value is not None and not (isinstance(value, (int, float))
                                      and not isinstance(value, bool)):
            raise self.fail(f"{name} must be a number, not {expression.to_string(value)}")
        return value

    def fire(self) -> None:
        latest = self.sum
        reset = self.input("reset")
        for channel in range(reset.width):
            if reset.has_token(channel):
                flag = reset.get(channel)
                if not isinstance(flag, bool):
                    raise self.fail(f"reset expects booleans, got {expression.to_string(flag)}")
                if flag:
                    latest = self._init()
        port = self.input("input")
        for channel in range(port.width):
            if port.has_token(channel):
                latest = _binary(self, "+", latest, port.get(channel))
        low, high = self._bound("lowerBound"), self._bound("upperBound")
        for bound, beyond in ((low, lambda b, v: b > v), (high, lambda b, v: b < v)):
            if bound is None:
                continue
            if not isinstance(latest, (int, float)) or isinstance(latest, bool):
                raise self.fail("lowerBound and upperBound only work with numbers, "
                                f"but the sum is {expression.to_string(latest)}")
            if beyond(bound, latest):
                latest = bound
        self.latest = latest
        self.output("output").broadcast(latest)

    def postfire(self) -> bool:
        self.sum = self.latest
        return super().postfire()


# -- strings ----------------------------------------------------------------------------


def java_regex(pattern: str) -> re.Pattern:
    """
    Compile a Java regular expression (as Ptolemy's string actors take them)
    with Python's re: named groups (?<name>...) and \\k<name> are translated.

    @raise re.error: if the pattern is not valid.
    """
    pattern = re.sub(r"(?<!\\)\(\?<([A-Za-z][A-Za-z0-9]*)>", r"(?P<\1>", pattern)
    pattern = re.sub(r"(?<!\\)\\k<([A-Za-z][A-Za-z0-9]*)>", r"(?P=\1)", pattern)
    return re.compile(pattern)


def java_replacement(replacement: str) -> Callable[[re.Match], str]:
    """
    The expansion of a Java replacement string (Matcher.replaceAll): $n and
    ${name} insert groups, a backslash takes the next character literally.

    @raise ValueError: (when applied) for a bad group reference.
    """

    def expand(match: re.Match) -> str:
        out: list[str] = []
        i, n = 0, len(replacement)
        while i < n:
            c = replacement[i]
            if c == "\\":
                i += 1
                if i >= n:
                    raise ValueError("character to be escaped is missing at the end of "
                                     "the replacement")
                out.append(replacement[i])
                i += 1
            elif c == "$":
                i += 1
                if i >= n:
                    raise ValueError("illegal group reference: '$' at the end of the "
                                     "replacement")
                if replacement[i] == "{":
                    end = replacement.find("}", i)
                    if end < 0:
                        raise ValueError("named group reference is missing its '}'")
                    name = replacement[i + 1:end]
                    if name not in match.re.groupindex:
                        raise ValueError(f"no group named {name!r}")
                    out.append(match.group(name) or "")
                    i = end + 1
                elif replacement[i] in "0123456789":
                    ref = int(replacement[i])
                    i += 1
                    while i < n and replacement[i] in "0123456789":
                        longer = ref * 10 + int(replacement[i])
                        if longer > match.re.groups:
                            break
                        ref, i = longer, i + 1
                    if ref > match.re.groups:
                        raise ValueError(f"no group {ref} in the pattern")
                    out.append(match.group(ref) or "")
                else:
                    raise ValueError(f"illegal group reference '${replacement[i]}' (write "
                                     "\\$ for a dollar sign)")
            else:
                out.append(c)
                i += 1
        return "".join(out)

    return expand


class StringReplace(Actor):
    """
    Replaces the matches of pattern in stringToEdit with replacement.

    Ports: stringToEdit, pattern, replacement (inputs, each optional: when
    connected, each token received replaces the parameter of the same name),
    output.
    Parameters: stringToEdit, pattern, replacement (strings), replaceAll
    (default true; false: only the first match), regularExpression (default
    true: pattern is a Java-style regular expression and replacement may
    use $0, $1, ... for the matched groups and \\$ for a dollar sign; false:
    both are plain text).
    """

    class_name = "ptolemy.actor.lib.string.StringReplace"
    ports = (PortSpec("stringToEdit", input=True), PortSpec("pattern", input=True),
             PortSpec("replacement", input=True), OUTPUT)
    parameters = (ParamSpec("stringToEdit", "", string=True),
                  ParamSpec("pattern", "", string=True),
                  ParamSpec("replacement", "", string=True),
                  ParamSpec("replaceAll", "true"), ParamSpec("regularExpression", "true"))

    def initialize(self) -> None:
        super().initialize()
        self.received: dict[str, str] = {}
        self.compiled: tuple[str, re.Pattern] | None = None
        _bool_param(self, "replaceAll")
        _bool_param(self, "regularExpression")

    def _value(self, name: str) -> str:
        port = self.input(name)
        if port.width and port.has_token():
            self.received[name] = _as_text(port.get())
        if name in self.received:
            return self.received[name]
        return _as_text(self.param(name))

    def fire(self) -> None:
        text = self._value("stringToEdit")
        pattern = self._value("pattern")
        replacement = self._value("replacement")
        count = 0 if _bool_param(self, "replaceAll") else 1
        if not _bool_param(self, "regularExpression"):
            if pattern:
                text = text.replace(pattern, replacement, -1 if count == 0 else 1)
            self.output("output").broadcast(text)
            return
        if self.compiled is None or self.compiled[0] != pattern:
            try:
                self.compiled = (pattern, java_regex(pattern))
            except (re.error, RecursionError, OverflowError) as e:
                raise self.fail(f"failed to compile regular expression {pattern!r}: {e}") from None
        try:
            result = self.compiled[1].sub(java_replacement(replacement), text, count=count)
        except (ValueError, IndexError, re.error) as e:
            raise self.fail(f"string replace failed (replacement {replacement!r}): {e}") from None
        self.output("output").broadcast(result)


def java_split(text: str, separator: re.Pattern) -> list[str]:
    """Java's String.split(regex): no leading empty string for a zero-width match,
    trailing empty strings removed."""
    pieces: list[str] = []
    start = 0
    for match in separator.finditer(text):
        if match.end() == 0:
            continue
        pieces.append(text[start:match.start()])
        start = match.end()
    if not pieces:
        return [text]
    pieces.append(text[start:])
    while pieces and pieces[-1] == "":
        pieces.pop()
    return pieces


_JAVA_TRIM = "".join(chr(i) for i in range(33))


class StringSplit(Actor):
    """
    Splits each input string into an array of strings.

    Ports: input (strings), output (arrays of strings).
    Parameters: separator (string: a regular expression, as in Ptolemy;
    default a newline, so the input is split into lines; trailing empty
    strings are dropped, as Java's split does), trimSpaces (default true:
    remove spaces around each piece).
    """

    class_name = "ptolemy.actor.lib.string.StringSplit"
    ports = (PortSpec("input", input=True), OUTPUT)
    parameters = (ParamSpec("separator", "\n", string=True), ParamSpec("trimSpaces", "true"))

    def initialize(self) -> None:
        super().initialize()
        separator = _as_text(self.param("separator"))
        if separator == "":
            raise self.fail("separator is empty")
        try:
            self.separator = java_regex(separator)
        except (re.error, RecursionError, OverflowError) as e:
            raise self.fail(f"separator {separator!r} is not a valid regular expression: "
                            f"{e}") from None
        _bool_param(self, "trimSpaces")

    def fire(self) -> None:
        port = self.input("input")
        if not port.has_token():
            return
        value = port.get()
        if not isinstance(value, str):
            raise self.fail(f"input must be a string, got {expression.to_string(value)}")
        pieces = java_split(value, self.separator)
        if _bool_param(self, "trimSpaces"):
            pieces = [p.strip(_JAVA_TRIM) for p in pieces]
        self.output("output").broadcast(pieces)


class StringJoin(Actor):
    """
    Joins the elements of each input array into one string, with separator
    between them (strings as they are, other values as written).

    Ports: input (arrays), output (strings).
    Parameters: separator (string, default ",").
    """

    class_name = "kree.actor.StringJoin"
    ports = (PortSpec("input", input=True), OUTPUT)
    parameters = (ParamSpec("separator", ",", string=True),)

    def fire(self) -> None:
        port = self.input("input")
        if not port.has_token():
            return
        value = port.get()
        if not isinstance(value, list):
            raise self.fail(f"input must be an array, got {expression.to_string(value)}")
        separator = _as_text(self.param("separator"))
        self.output("output").broadcast(separator.join(_as_text(v) for v in value))
