"""
Ptolemy longs are Java's: 64-bit two's complement that wraps around.  Each
expected value below is what Java (and so Ptolemy's LongToken) computes.
"""

import pytest

from kree.engine.expression import CONSTANTS, ExpressionError, Long, evaluate_text, parse, to_string

MIN = -(2**63)
MAX = 2**63 - 1


@pytest.mark.parametrize("text, expected", [
    # Negation and abs of the minimum are the minimum again (Java's -Long.MIN_VALUE).
    ("-MinLong", MIN),
    ("-(-MinLong)", MIN),
    ("abs(MinLong)", MIN),
    ("abs({MinLong, -1L})", [MIN, 1]),
    # + - * wrap.
    ("MaxLong + 1L", MIN),
    ("MaxLong + 1", MIN),
    ("MinLong - 1L", MAX),
    ("MaxLong * 2L", -2),
    ("MinLong * -1L", MIN),
    ("MaxLong * MaxLong", 1),
    ("{MaxLong, 1L} + 1L", [MIN, 2]),
    ("5L + 2147483648 * 4294967296", MIN + 5),
    # / and %: the one overflowing division.
    ("MinLong / -1L", MIN),
    ("MinLong % -1L", 0),
    # ^ is repeated 64-bit multiplication.
    ("2L ^ 63", MIN),
    ("2L ^ 64", 0),
    ("(-2L) ^ 63", MIN),
    ("3L ^ 41", (3**41 + 2**63) % 2**64 - 2**63),  # Java: -420491770248316829
    ("2L ^ 100000", 0),
    # Shifts: the result wraps and the count is taken modulo 64.
    ("1L << 63", MIN),
    ("1L << 64", 1),
    ("3L << 62", MIN + 2**62),
    ("1L << 100000", 2**(100000 % 64)),
    ("MinLong >> 63", -1),
    ("-1L >> 64", -1),
    ("-1L >>> 0", -1),
    ("-1L >>> 1", MAX),
    ("MinLong >>> 63", 1),
    ("~MaxLong", MIN),
    # Literals: the magnitude of MinLong stands for MinLong; hex is a 64-bit pattern.
    ("-9223372036854775808L", MIN),
    ("9223372036854775807L", MAX),
    ("0xFFFFFFFFFFFFFFFFL", -1),
    ("0x8000000000000000L", MIN),
    # A double converted to long saturates.
    ("long(1.0e30)", MAX),
    ("long(-1.0e30)", MIN),
    ("long(2.5)", 2),
])
def test_long_arithmetic_wraps_as_in_java(text, expected):
    value = evaluate_text(text)
    assert value == expected
    items = value if isinstance(value, list) else [value]
    assert all(type(item) is Long and MIN <= item <= MAX for item in items)


def test_every_long_is_within_64_bits():
    assert Long(2**63) == MIN
    assert Long(2**64 + 5) == 5
    assert Long(-(2**63) - 1) == MAX
    assert Long(MIN) == MIN and Long(MAX) == MAX
    assert CONSTANTS["MinLong"] == MIN and CONSTANTS["MaxLong"] == MAX
    assert to_string(evaluate_text("-MinLong")) == "-9223372036854775808L"


@pytest.mark.parametrize("text", ["9223372036854775809L", "18446744073709551616L",
                                  "0x1FFFFFFFFFFFFFFFFL"])
def test_long_literals_beyond_64_bits_are_errors(text):
    with pytest.raises(ExpressionError, match="too large for a long at column 1"):
        parse(text)


def test_ints_still_do_not_wrap():
    # Only longs wrap; ints are unbounded up to MAX_INT_BITS (the module docstring).
    assert evaluate_text("MaxInt + 1") == 2**31
    assert type(evaluate_text("MaxInt + 1")) is int
