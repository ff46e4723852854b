"""Tests of kree.engine.expression: the Ptolemy II expression language."""

import math
import time

import pytest

from kree.engine.expression import (
    CONSTANTS, MAX_DEPTH, MAX_LENGTH, ExpressionError, Long, display, evaluate, evaluate_text,
    identifiers, parse, parse_value, to_string,
)

VALUES = {"x": 3, "y": 2.5, "s": "hi", "arr": [10, 20, 30], "rec": {"a": 1, "b": "x", "arr": [7, 8]},
          "flag": True, "big": Long(5), "e": 100, "nested": [[1, 2], [3, 4]]}


def lookup(name):
    return VALUES[name]


def ev(text):
    return evaluate_text(text, lookup)


def text_of(text):
    return to_string(ev(text))


def fails(text, match, lookup=lookup):
    with pytest.raises(ExpressionError, match=match):
        evaluate_text(text, lookup)


# --- literals and to_string -------------------------------------------------


@pytest.mark.parametrize("text, value, shown", [
    ("42", 42, "42"),
    ("0x1F", 31, "31"),
    ("0x1FL", Long(31), "31L"),
    ("500L", Long(500), "500L"),
    ("500l", Long(500), "500L"),
    ("1.5", 1.5, "1.5"),
    (".5", 0.5, "0.5"),
    ("1e3", 1000.0, "1000.0"),
    ("2.5E-3", 0.0025, "0.0025"),
    ("1.0d", 1.0, "1.0"),
    ("2f", 2.0, "2.0"),
    ("1.", 1.0, "1.0"),
    ("1.5e20", 1.5e20, "1.5e+20"),
    ('"a\\"b"', 'a"b', '"a\\"b"'),
    ('"tab\\there\\nnew\\\\"', "tab\there\nnew\\", '"tab\\there\\nnew\\\\"'),
    ("true", True, "true"),
    ("false", False, "false"),
    ("{1, 2, 3}", [1, 2, 3], "{1, 2, 3}"),
    ("{}", [], "{}"),
    ("{b = \"x\", a = 1}", {"a": 1, "b": "x"}, '{a=1, b="x"}'),
    ('{"odd label" = 1}', {"odd label": 1}, '{"odd label"=1}'),
    ("{{1, 2}, {3}}", [[1, 2], [3]], "{{1, 2}, {3}}"),
    ("{1, 2.5}", [1.0, 2.5], "{1.0, 2.5}"),
    ("{1, 2L}", [Long(1), Long(2)], "{1L, 2L}"),
    ("Infinity", math.inf, "Infinity"),
    ("-Infinity", -math.inf, "-Infinity"),
    ("MaxInt", 2**31 - 1, "2147483647"),
    ("MinInt", -(2**31), "-2147483648"),
])
def test_literals_and_to_string(text, value, shown):
    result = evaluate_text(text)
    assert result == value
    assert type(result) is type(value)
    assert to_string(result) == shown
    assert parse_value(shown) == value  # round trip


def test_constants():
    assert evaluate_text("PI") == evaluate_text("pi") == math.pi
    assert evaluate_text("E") == evaluate_text("e") == math.e
    assert math.isnan(evaluate_text("NaN"))
    assert to_string(math.nan) == "NaN"


def test_to_string_and_display():
    assert to_string(-0.0) == "-0.0"
    assert to_string(3.0) == "3.0"
    assert to_string([True, "a", {"z": Long(1)}]) == '{true, "a", {z=1L}}'
    assert display("plain") == "plain"
    assert to_string("plain") == '"plain"'
    assert display(["a"]) == '{"a"}'
    assert display(1.5) == "1.5"
    assert display({"a": "b"}) == '{a="b"}'
    with pytest.raises(ExpressionError, match="cannot convert"):
        to_string(None)
    with pytest.raises(ExpressionError, match="cannot convert"):
        to_string((1, 2))


# --- operators ---------------------------------------------------------------


@pytest.mark.parametrize("text, value", [
    ("1 + 2 * 3", 7),
    ("(1 + 2) * 3", 9),
    ("10 - 4 - 3", 3),
    ("-2^2", -4),
    ("2^3^2", 512),
    ("(-2)^2", 4),
    ("2^-1", 0.5),
    ("2.0^3", 8.0),
    ("2^10", 1024),
    ("7 / 2", 3),
    ("-7 / 2", -3),
    ("7 / -2", -3),
    ("7 % 3", 1),
    ("-7 % 3", -1),
    ("7 % -3", 1),
    ("7.0 / 2", 3.5),
    ("5.5 % 2", 1.5),
    ("-5.5 % 2", -1.5),
    ("1 + 2.5", 3.5),
    ("500L + 1", Long(501)),
    ("2L ^ 3", Long(8)),
    ("-5L", Long(-5)),
    ("1 < 2", True),
    ("2 <= 2", True),
    ("3 > 4", False),
    ("3 >= 3.0", True),
    ('"abc" < "abd"', True),
    ("1 == 1.0", True),
    ("1 == 1L", True),
    ("1 != 2", True),
    ('{1, {2, "a"}} == {1, {2, "a"}}', True),
    ("{a = 1} == {a = 1.0}", True),
    ("{a = 1} != {b = 1}", True),
    ("true == 1", False),
    ('"1" == 1', False),
    ("true && false", False),
    ("true || false", True),
    ("!true", False),
    ("false && 1", False),  # short-circuit: the right side is not checked
    ("true || 1", True),
    ("true ? 1 : 2", 1),
    ("false ? 1 : true ? 2 : 3", 2),
    ("false ? 1 : false ? 2 : 3", 3),
    ("true ? false ? 1 : 2 : 3", 2),
    ("1 + 1 == 2 ? 10 : 20", 10),
    ("true ? 1 : 1 / 0", 1),  # the other branch is not evaluated
    ("6 & 3", 2),
    ("6 | 3", 7),
    ("6 # 3", 5),
    ("~5", -6),
    ("true & false", False),
    ("true # true", False),
    ("1 << 4", 16),
    ("-16 >> 2", -4),
    ("-1 >>> 28", 15),
    ("-1L >>> 60", Long(15)),
    ("1 | 2 # 3 & 1", 3),  # | below # below &
    ("1 + 2 << 1", 6),  # + binds tighter than <<
    ("1 << 2 < 5", True),  # << tighter than <
    ("1 < 2 == true", True),
    ("true || false && false", True),
    ("2 * 3 % 4", 2),
])
def test_operators(text, value):
    result = evaluate_text(text)
    assert result == value
    assert type(result) is type(value)


def test_float_division_like_java():
    assert evaluate_text("1 / 0.0") == math.inf
    assert evaluate_text("-1 / 0.0") == -math.inf
    assert evaluate_text("1 / -0.0") == -math.inf
    assert math.isnan(evaluate_text("0.0 / 0.0"))
    assert math.isnan(evaluate_text("1.0 % 0"))
    assert evaluate_text("10.0 ^ 400") == math.inf


def test_string_concatenation():
    assert evaluate_text('"a" + 1') == "a1"
    assert evaluate_text('1 + "a"') == "1a"
    assert evaluate_text('"a" + "b"') == "ab"
    assert evaluate_text('"x" + {1, 2}') == "x{1, 2}"
    assert evaluate_text('"x" + {"y"}') == 'x{"y"}'
    assert evaluate_text('"v=" + 1.0') == "v=1.0"
    assert evaluate_text('"v=" + true') == "v=true"
    assert evaluate_text('"n" + 5L') == "n5L"
    assert evaluate_text('"r" + {a = "b"}') == 'r{a="b"}'
    assert evaluate_text('1 + 2 + "a"') == "3a"  # left to right


def test_array_arithmetic():
    assert evaluate_text("{1, 2} + 1") == [2, 3]
    assert evaluate_text("10 - {1, 2}") == [9, 8]
    assert evaluate_text("{1, 2} * {3, 4}") == [3, 8]
    assert evaluate_text("{1, 2} / 2.0") == [0.5, 1.0]
    assert evaluate_text("-{1, {2}}") == [-1, [-2]]
    assert evaluate_text("{{1}, {2}} + 1") == [[2], [3]]
    with pytest.raises(ExpressionError, match="different lengths"):
        evaluate_text("{1, 2} + {1}")


# --- identifiers, indexing, records -------------------------------------------


def test_lookup_and_indexing():
    assert ev("x * 2") == 6
    assert ev("arr(1)") == 20
    assert ev("nested(1)(0)") == 3
    assert ev("{5, 6}(1)") == 6
    assert ev("rec.a + 1") == 2
    assert ev("rec.b") == "x"
    assert ev("rec.arr(1)") == 8
    assert ev("{a = {b = 2}}.a.b") == 2
    assert ev("arr.length()") == 3
    assert ev("s + x") == "hi3"


def test_lookup_wins_over_constants():
    assert ev("e") == 100
    assert ev("E") == math.e


def test_unknown_identifier():
    fails("nope + 1", "unknown identifier 'nope'")
    fails("nope", "unknown identifier 'nope'", lookup=lambda name: (_ for _ in ()).throw(KeyError(name)))


def test_lookup_errors_pass_through():
    def broken(name):
        raise ExpressionError("parameter p is broken")

    with pytest.raises(ExpressionError, match="parameter p is broken"):
        evaluate_text("p", broken)


def test_identifiers():
    assert identifiers(parse("a + b * sin(c) + arr(1) + rec.field + PI")) == {
        "a", "b", "c", "arr", "rec", "PI"}
    assert identifiers(parse('{x = y, z = {w}}.x ? "s".length() : f(u)')) == {"y", "w", "f", "u"}
    assert identifiers(parse("1 + 2")) == set()


def test_evaluate_parsed_node_twice():
    node = parse("x + 1")
    assert evaluate(node, {"x": 1}.__getitem__) == 2
    assert evaluate(node, {"x": 2}.__getitem__) == 3


def test_parse_value():
    assert parse_value("{1, 2}") == [1, 2]
    assert parse_value("PI / 2") == math.pi / 2
    assert parse_value('"text"') == "text"
    with pytest.raises(ExpressionError, match="unknown identifier 'a'"):
        parse_value("true ? 1 : a")
    with pytest.raises(ExpressionError, match="unknown identifier 'f'"):
        parse_value("f(1)")


# --- functions -----------------------------------------------------------------


@pytest.mark.parametrize("text, value", [
    ("abs(-3)", 3),
    ("abs(-2.5)", 2.5),
    ("abs(-3L)", Long(3)),
    ("abs({-1, 2})", [1, 2]),
    ("acos(1)", 0.0),
    ("asin(0)", 0.0),
    ("atan(0)", 0.0),
    ("atan2(0, 1)", 0.0),
    ("ceil(1.2)", 2.0),
    ("floor(-1.2)", -2.0),
    ("cos(0)", 1.0),
    ("cosh(0)", 1.0),
    ("exp(0)", 1.0),
    ("log(1)", 0.0),
    ("log10(1000)", 3.0),
    ("max(1, 2)", 2),
    ("max(3, 2.5)", 3.0),
    ("max({1, 5, 2})", 5),
    ("min(1, 2)", 1),
    ("min({4.5, 2, 3})", 2.0),
    ("pow(2, 10)", 1024.0),
    ("round(2.5)", 3),
    ("round(2.4)", 2),
    ("round(-2.5)", -3),
    ("round(7)", 7),
    ("sin(0)", 0.0),
    ("sinh(0)", 0.0),
    ("sqrt(16)", 4.0),
    ("tan(0)", 0.0),
    ("tanh(0)", 0.0),
    ("sin({0, 0})", [0.0, 0.0]),
    ("sum({1, 2, 3})", 6),
    ("sum({1, 2.5})", 3.5),
    ("sum({})", 0),
    ('sum({"a", "b"})', "ab"),
    ("length({1, 2})", 2),
    ('length("abc")', 3),
    ("int(2.9)", 2),
    ("int(-2.9)", -2),
    ("int(5L)", 5),
    ("double(3)", 3.0),
    ("long(3.7)", Long(3)),
    ("toString(1.0)", "1.0"),
    ('toString("a")', '"a"'),
    ('parseInt("-42")', -42),
    ('parseInt("ff", 16)', 255),
    ('parseDouble(" 1.5e3 ")', 1500.0),
    ('parseDouble("Infinity")', math.inf),
    ('repeat(3, "a")', ["a", "a", "a"]),
    ("repeat(0, 1)", []),
    ("concatenate({1}, {2, 3})", [1, 2, 3]),
    ("concatenate({{1}, {2}, {}})", [1, 2]),
    ("subarray({1, 2, 3, 4}, 1, 2)", [2, 3]),
    ("subarray({1, 2, 3}, 2, 10)", [3]),
    ("isNaN(NaN)", True),
    ("isNaN(1)", False),
    ("isInfinite(-Infinity)", True),
    ("isInfinite(1.0)", False),
])
def test_functions(text, value):
    result = evaluate_text(text)
    assert result == value
    assert type(result) is type(value)


def test_math_functions_like_java():
    assert math.isnan(evaluate_text("sqrt(-1)"))
    assert evaluate_text("log(0)") == -math.inf
    assert evaluate_text("exp(1000)") == math.inf
    assert evaluate_text("sinh(-1000)") == -math.inf
    assert math.isnan(evaluate_text("acos(2)"))
    assert math.isnan(evaluate_text("max(1, NaN)"))


def test_a_value_named_like_a_function_is_indexed():
    assert evaluate_text("max(1)", {"max": [4, 5]}.__getitem__) == 5


# --- methods -------------------------------------------------------------------


@pytest.mark.parametrize("text, value", [
    ('"abc".length()', 3),
    ('"aBc".toUpperCase()', "ABC"),
    ('"aBc".toLowerCase()', "abc"),
    ('"  a b \\n".trim()', "a b"),
    ('"hello".substring(1)', "ello"),
    ('"hello".substring(1, 3)', "el"),
    ('"hello".indexOf("l")', 2),
    ('"hello".indexOf("l", 3)', 3),
    ('"hello".indexOf("z")', -1),
    ('"hello".startsWith("he")', True),
    ('"hello".endsWith("he")', False),
    ('"a1b22c".replaceAll("[0-9]+", "-")', "a-b-c"),
    ('"John Smith".replaceAll("(\\\\w+) (\\\\w+)", "$2, $1")', "Smith, John"),
    ('"a.b".replaceAll("\\\\.", "\\\\$")', "a$b"),
    ('"a,b,,c,,".split(",")', ["a", "b", "", "c"]),
    ('"abc".split("")', ["a", "b", "c"]),
    ('"".split(",")', [""]),
    ('"a1b2".split("[0-9]")', ["a", "b"]),
    ("{1, 2}.length()", 2),
    ("1.5.toString()", "1.5"),
    ("{1, \"a\"}.toString()", '{1, "a"}'),
    ('"q".toString()', '"q"'),
    ("(3).toString()", "3"),
])
def test_methods(text, value):
    assert evaluate_text(text) == value


# --- errors --------------------------------------------------------------------


@pytest.mark.parametrize("text, match", [
    ("1 + )", r"unexpected '\)' at column 5 in '1 \+ \)'"),
    ("1 +", "unexpected end of input at column 4"),
    ("(1 + 2", "expected '\\)' but found end of input at column 7"),
    ("f(1,)", "unexpected '\\)' at column 5"),
    ("{1 2}", "expected ',' or '}' but found '2' at column 4"),
    ("{a = 1, 2}", "expected 'name = value' but found '2' at column 9"),
    ("{a = 1, a = 2}", "duplicate field 'a' at column 9"),
    ("true ? 1", "expected ':' but found end of input at column 9"),
    ("'a'", "unexpected character \"'\" at column 1"),
    ("1 @ 2", "unexpected character '@' at column 3"),
    ('"abc', "unterminated string at column 1"),
    ('"a\\qb"', "invalid escape '\\\\q' in string at column 3"),
    ("12abc", "invalid number '12a' at column 1"),
    ("1.5L", "invalid number '1.5L' at column 1"),
    ("x.", "expected a name after '.' but found end of input at column 3"),
    ("", "empty expression"),
    ("   ", "empty expression"),
    ("1 2", "unexpected '2' at column 3"),
    ("().__class__", "unexpected '\\)' at column 2"),
])
def test_syntax_errors(text, match):
    with pytest.raises(ExpressionError, match=match):
        parse(text)


@pytest.mark.parametrize("text, match", [
    ("1 / 0", "division by zero"),
    ("1 % 0", "division by zero"),
    ("5L / 0", "division by zero"),
    ("1 && true", "'&&' requires boolean operands, got int"),
    ("true || 1", None),
    ("false || 1", "'\\|\\|' requires boolean operands, got int"),
    ("!1", "'!' requires boolean operands"),
    ("1 ? 2 : 3", "'\\?:' requires boolean operands"),
    ('"a" < 1', "'<' requires two numbers or two strings, got string and int"),
    ("{1} < {2}", "'<' requires two numbers or two strings"),
    ("true + 1", "'\\+' cannot be applied to boolean and int"),
    ('"a" - 1', "'-' cannot be applied to string and int"),
    ("1.5 & 1", "'&' requires two integers or two booleans"),
    ("1 << 1.0", "'<<' requires integers"),
    ("1 << -1", "non-negative shift count"),
    ("-true", "'-' requires a number, got boolean"),
    ("~1.5", "'~' requires an integer"),
    ("nosuch(1)", "unknown function 'nosuch'"),
    ("sin(1, 2)", "function 'sin' takes 1 argument \\(2 given\\)"),
    ("subarray({1})", "function 'subarray' takes 3 arguments \\(1 given\\)"),
    ('sin("a")', "'sin' requires a number, got string"),
    ('length(1)', "'length' requires an array or a string"),
    ("max({})", "'max' of an empty array"),
    ("max(1, \"a\")", "'max' requires a number"),
    ('parseInt("1.5")', "cannot parse \"1.5\" as an integer"),
    ('parseInt("12", 99)', "radix from 2 to 36"),
    ('parseDouble("abc")', "cannot parse \"abc\" as a number"),
    ("repeat(-1, 0)", "non-negative integer count"),
    ("concatenate({1}, 2)", "'concatenate' requires an array, got int"),
    ("subarray({1}, -1, 1)", "non-negative start and length"),
    ("int(NaN)", "cannot convert NaN to an integer"),
    ("round(Infinity)", "cannot convert Infinity to an integer"),
    ("arr(3)", "array index 3 out of range for an array of length 3"),
    ("arr(-1)", "array index -1 out of range"),
    ("arr(1.0)", "array index must be an integer"),
    ("arr(1, 2)", "an array index takes one argument \\(2 given\\)"),
    ("x(0)", "cannot call or index int"),
    ("rec.zzz", "record has no field 'zzz'"),
    ("x.foo", "unknown field 'foo' of int"),
    ('"a".foo()', "unknown method 'foo' of string"),
    ("arr.toUpperCase()", "unknown method 'toUpperCase' of array"),
    ('"abc".substring(2, 1)', "substring\\(2, 1\\) out of range for a string of length 3"),
    ('"abc".substring(0, 9)', "out of range"),
    ('"abc".length(1)', "method 'length' takes 0 arguments \\(1 given\\)"),
    ('"abc".startsWith(1)', "'startsWith' requires a string"),
    ('"abc".replaceAll("(", "x")', "'replaceAll': invalid regular expression"),
    ('"abc".replaceAll("b", "$2")', "no group 2 in the pattern"),
    ('"abc".replaceAll("b", "$x")', "illegal group reference"),
    ('"abc".split("[")', "'split': invalid regular expression"),
    ("1e400 * 10 > 0 ? MaxDouble * 2 : 0", None),
    ("2^100000 + 0.5", "integer result too large"),
    ("double(2^9999 * 2^9999)", "integer result too large"),
    ("double(2^9000) * 2^9000 * 1.0", "integer too large to convert to double"),
])
def test_evaluation_errors(text, match):
    if match is None:
        evaluate_text(text, lookup)  # no error
        return
    fails(text, match)


def test_unknown_identifier_in_a_call_argument():
    fails("sin(nope)", "unknown identifier 'nope'")


# --- hostile input --------------------------------------------------------------


def timed(function, *args):
    start = time.perf_counter()
    try:
        with pytest.raises(ExpressionError) as raised:
            function(*args)
    finally:
        # A bound, not a benchmark: an unguarded blow-up takes minutes or
        # never ends; 10 s leaves room for a loaded CI machine.
        assert time.perf_counter() - start < 10.0
    return str(raised.value)


def test_deep_nesting():
    assert "nested too deeply" in timed(parse, "(" * 10000 + "1" + ")" * 10000)
    assert "nested too deeply" in timed(parse, "-" * 10000 + "1")
    assert "nested too deeply" in timed(parse, "{" * 10000 + "}" * 10000)
    assert "nested too deeply" in timed(parse, "1" + "^1" * 10000)
    assert "nested too deeply" in timed(parse, "+".join(["1"] * 10000))  # a left-deep AST
    assert "nested too deeply" in timed(parse, "true ? 1 : " * 5000 + "1")
    assert "nested too deeply" in timed(parse, "abs(" * 10000 + "1" + ")" * 10000)
    assert "nested too deeply" in timed(parse, '"a"' + ".length()" * 10000)


def test_nesting_up_to_the_limit_works():
    depth = MAX_DEPTH - 1
    assert evaluate_text("(" * depth + "1" + ")" * depth) == 1
    assert evaluate_text("abs(" * depth + "1" + ")" * depth) == 1
    assert evaluate_text("{" * depth + "}" * depth) == evaluate_text("{" * depth + "}" * depth)
    assert evaluate_text("-" * depth + "1") == -1
    assert evaluate_text("+".join(["1"] * (MAX_DEPTH - 1))) == MAX_DEPTH - 1
    assert "nested too deeply" in timed(to_string, _deeply_nested_list(5000))


def _deeply_nested_list(depth):
    value = []
    for _ in range(depth):
        value = [value]
    return value


def test_long_input():
    assert "too long" in timed(parse, "1" * 1_000_000)
    assert "too long" in timed(parse, "1+" * (MAX_LENGTH // 2) + "1")
    assert evaluate_text("1" + " " * (MAX_LENGTH - 1)) == 1


def test_reaching_python_fails():
    assert "unknown function '__import__'" in timed(evaluate_text, '__import__("os").system("x")')
    assert "unexpected character" in timed(evaluate_text, "__import__('os').system('x')")
    assert "unknown field '__class__'" in timed(evaluate_text, "x.__class__.__bases__", lookup)
    assert "unknown identifier 'x'" in timed(evaluate_text, "x.__class__.__bases__")
    assert "unknown method '__class__'" in timed(evaluate_text, '"a".__class__()')
    assert "unknown identifier 'open'" in timed(evaluate_text, "open")
    assert "unknown function 'eval'" in timed(evaluate_text, 'eval("1")')
    assert "record has no field '__dict__'" in timed(evaluate_text, "{a = 1}.__dict__")


def test_resource_limits():
    assert "array result too large" in timed(evaluate_text, "repeat(100000000, 1)")
    assert "array result too large" in timed(evaluate_text, "repeat(10000000, repeat(10000000, 1))")
    assert "integer result too large" in timed(evaluate_text, "2^100000")
    assert "integer result too large" in timed(evaluate_text, "1 << 100000")
    assert "integer result too large" in timed(evaluate_text, "2^9999 * 2^9999")
    assert "too large" in timed(evaluate_text, "1" + "0" * 5000)
    assert "too expensive" in timed(evaluate_text, '"a"' + ".toString()" * 60)
    texts = {"a": "a" * 200, "x": "x" * 60000}.__getitem__
    assert "string result too large" in timed(evaluate_text, 'a.replaceAll("", x)', texts)
    assert "replacement longer" in timed(evaluate_text, 'a.replaceAll("", x + x)', texts)
    assert "string result too large" in timed(evaluate_text, "a.replaceAll(\"(a)\", \"$1\" + x)", texts)
    assert "pattern longer" in timed(evaluate_text, '"a".replaceAll("' + "a" * 1001 + '", "")')
    assert "string longer" in timed(evaluate_text, 's.split(",")', {"s": "a" * (MAX_LENGTH + 1)}.__getitem__)


def test_large_but_allowed_results_are_computed():
    assert len(evaluate_text("repeat(1000000, 0)")) == 1_000_000
    assert evaluate_text("2^9999").bit_length() == 10000


def test_constants_are_read_only():
    with pytest.raises(TypeError):
        CONSTANTS["PI"] = 3  # type: ignore[index]
