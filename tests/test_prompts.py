"""
kree.prompts: answers to a job's prompt, checked before the engine sees them,
and never accepted when the engine's UserInput would refuse them.
"""

import json
import math

import pytest

from kree.errors import KreeError
from kree.prompts import MAX_STRING, InvalidAnswer, PromptUnreadable, check_answer, read_prompt


def field(name, kind, default=None, **extra):
    return {"name": name, "type": kind, "label": name, "default": default, **extra}


def prompt(*fields, title="Please answer"):
    return {"title": title, "fields": list(fields)}


ONE = {
    "string": prompt(field("s", "string")),
    "int": prompt(field("n", "int")),
    "double": prompt(field("x", "double")),
    "boolean": prompt(field("b", "boolean")),
    "choice": prompt(field("c", "choice", choices=["fast", "slow"])),
}
# The engine's own prompt for TWO_FIELDS in test_actors_external.py.
ENGINE_PROMPT = {"title": "How many?", "fields": [
    {"name": "n", "type": "int", "label": "Count", "default": None},
    {"name": "mode", "type": "choice", "label": "mode", "default": "slow",
     "choices": ["fast", "slow"]}]}
ALL = prompt(field("s", "string", "hello"), field("n", "int", 3), field("x", "double", 1.5),
             field("b", "boolean", False),
             field("c", "choice", "slow", choices=["fast", "slow"]))

ACCEPTED = [
    ("string", "s", "", ""),
    ("string", "s", "héllo\n\u0000", "héllo\n\u0000"),
    ("string", "s", "x" * MAX_STRING, "x" * MAX_STRING),
    ("int", "n", 0, 0),
    ("int", "n", -7, -7),
    ("int", "n", 10**30, 10**30),
    ("double", "x", 2.5, 2.5),
    ("double", "x", 2, 2.0),
    ("double", "x", -1e300, -1e300),
    ("boolean", "b", True, True),
    ("boolean", "b", False, False),
    ("choice", "c", "fast", "fast"),
    ("choice", "c", "slow", "slow"),
]
REFUSED = [
    ("string", "s", 5),
    ("string", "s", True),
    ("string", "s", ["a"]),
    ("string", "s", {"a": 1}),
    ("int", "n", "5"),
    ("int", "n", 5.5),
    ("int", "n", True),
    ("int", "n", False),
    ("int", "n", [1]),
    ("double", "x", "2.5"),
    ("double", "x", True),
    ("double", "x", [2.5]),
    ("boolean", "b", 1),
    ("boolean", "b", 0),
    ("boolean", "b", "true"),
    ("choice", "c", "Fast"),
    ("choice", "c", "medium"),
    ("choice", "c", 1),
    ("choice", "c", ["fast"]),
]
# Refused here although the engine would take them (we are stricter, never looser).
STRICTER = [
    ("string", "s", "x" * (MAX_STRING + 1)),
    ("double", "x", math.nan),
    ("double", "x", math.inf),
    ("double", "x", -math.inf),
]


# -- types ------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind,name,value,expected", ACCEPTED)
def test_each_type_accepted(kind, name, value, expected):
    result = check_answer(ONE[kind], {name: value})
    assert result == {name: expected}
    assert type(result[name]) is type(expected)


@pytest.mark.parametrize("kind,name,value", REFUSED + STRICTER)
def test_each_type_refused(kind, name, value):
    with pytest.raises(InvalidAnswer) as e:
        check_answer(ONE[kind], {name: value})
    assert e.value.status == 422 and e.value.code == "invalid_answer"
    assert e.value.details["field"] == name and e.value.details["fields"] == [name]
    assert e.value.message.startswith(f"the answer for field {name} must be ")


def test_integral_float_is_refused_for_int_with_an_explicit_message():
    with pytest.raises(InvalidAnswer) as e:
        check_answer(ONE["int"], {"n": 2.0})
    assert "must be an integer, not 2.0" in e.value.message
    assert "decimal point" in e.value.message and "send 2" in e.value.message


def test_double_returned_as_float_and_overflow_refused():
    assert check_answer(ONE["double"], {"x": 3}) == {"x": 3.0}
    with pytest.raises(InvalidAnswer, match="too large for a double"):
        check_answer(ONE["double"], {"x": 10**400})
    with pytest.raises(InvalidAnswer, match="NaN and infinities"):
        check_answer(ONE["double"], {"x": float("nan")})


def test_boolean_message_and_choice_message_list_what_is_allowed():
    with pytest.raises(InvalidAnswer) as e:
        check_answer(ONE["boolean"], {"b": "yes"})
    assert e.value.message == 'the answer for field b must be true or false, not "yes"'
    with pytest.raises(InvalidAnswer) as e:
        check_answer(ONE["choice"], {"c": "medium"})
    assert e.value.message == 'the answer for field c must be one of "fast", "slow", not "medium"'


def test_long_string_refused_and_not_echoed():
    long = "y" * (MAX_STRING + 1)
    with pytest.raises(InvalidAnswer) as e:
        check_answer(ONE["string"], {"s": long})
    assert f"{MAX_STRING + 1} characters, more than {MAX_STRING}" in e.value.message
    assert len(e.value.message) < 300
    assert len(json.dumps(e.value.to_json())) < 500


def test_several_wrong_types_reported_together():
    with pytest.raises(InvalidAnswer) as e:
        check_answer(ALL, {"s": 1, "n": "2", "x": 1.0, "b": None, "c": "slow"})
    assert e.value.details == {"fields": ["s", "n"]}
    assert "field s must be" in e.value.message and "field n must be" in e.value.message


# -- defaults, missing, nulls -----------------------------------------------------------------


def test_defaults_fill_missing_fields_and_result_is_complete():
    assert check_answer(ALL, {}) == {"s": "hello", "n": 3, "x": 1.5, "b": False, "c": "slow"}
    assert check_answer(ALL, {"n": 9, "b": True}) == {
        "s": "hello", "n": 9, "x": 1.5, "b": True, "c": "slow"}
    assert list(check_answer(ALL, {"c": "fast", "s": "z"})) == ["s", "n", "x", "b", "c"]


def test_default_false_and_zero_and_empty_string_are_defaults():
    p = prompt(field("b", "boolean", False), field("n", "int", 0), field("s", "string", ""))
    assert check_answer(p, {}) == {"b": False, "n": 0, "s": ""}


def test_double_default_is_a_float():
    result = check_answer(prompt(field("x", "double", 2)), {})
    assert result == {"x": 2.0} and type(result["x"]) is float


def test_missing_fields_all_named_at_once():
    p = prompt(field("a", "string"), field("b", "int"), field("c", "int", 1), field("d", "boolean"))
    with pytest.raises(InvalidAnswer) as e:
        check_answer(p, {"b": 4})
    assert e.value.details == {"fields": ["a", "d"]}
    assert e.value.message == "the answer gives no value for fields a, d"
    with pytest.raises(InvalidAnswer) as e:
        check_answer(p, {"a": "x", "b": 4})
    assert e.value.details == {"field": "d", "fields": ["d"]}
    assert e.value.message == "the answer gives no value for field d"


def test_null_takes_the_default_or_is_missing():
    assert check_answer(ENGINE_PROMPT, {"n": 1, "mode": None}) == {"n": 1, "mode": "slow"}
    with pytest.raises(InvalidAnswer) as e:
        check_answer(ENGINE_PROMPT, {"n": None, "mode": "fast"})
    assert e.value.details["fields"] == ["n"]
    assert "no value for field n" in e.value.message


def test_missing_reported_before_wrong_types():
    p = prompt(field("a", "string"), field("b", "int"))
    with pytest.raises(InvalidAnswer, match="no value for field a"):
        check_answer(p, {"b": "x"})


# -- unknown names ----------------------------------------------------------------------------


def test_unknown_names_listed():
    with pytest.raises(InvalidAnswer) as e:
        check_answer(ENGINE_PROMPT, {"n": 1, "zeta": 1, "alpha": 2})
    assert e.value.details == {"fields": ["alpha", "zeta"], "expected": ["n", "mode"]}
    assert e.value.message == "the answer has unknown fields alpha, zeta (expected n, mode)"


def test_unknown_names_checked_before_missing_and_odd_names_quoted():
    with pytest.raises(InvalidAnswer) as e:
        check_answer(ENGINE_PROMPT, {"N": 1})
    assert e.value.details["field"] == "N"
    with pytest.raises(InvalidAnswer) as e:
        check_answer(ENGINE_PROMPT, {"n": 1, "a b": 1})
    assert 'unknown field "a b"' in e.value.message


def test_many_unknown_names_are_cut_in_the_message():
    body = {f"f{i}": i for i in range(500)}
    with pytest.raises(InvalidAnswer) as e:
        check_answer(ENGINE_PROMPT, body)
    assert "and 480 more" in e.value.message
    assert len(e.value.details["fields"]) == 100


# -- body shapes ------------------------------------------------------------------------------


def test_both_body_shapes():
    expected = {"n": 4, "mode": "slow"}
    assert check_answer(ENGINE_PROMPT, {"answers": {"n": 4}}) == expected
    assert check_answer(ENGINE_PROMPT, {"n": 4}) == expected
    assert check_answer(ALL, {"answers": {}}) == check_answer(ALL, {})


@pytest.mark.parametrize("body", [None, [], ["n", 4], "n=4", 4, True])
def test_body_not_an_object(body):
    with pytest.raises(InvalidAnswer, match="the body must be a JSON object"):
        check_answer(ENGINE_PROMPT, body)


@pytest.mark.parametrize("wrapped", [None, [], [{"n": 4}], "n=4", 4])
def test_answers_not_an_object(wrapped):
    with pytest.raises(InvalidAnswer) as e:
        check_answer(ENGINE_PROMPT, {"answers": wrapped})
    assert e.value.details == {"field": "answers"}
    assert e.value.message.startswith("answers must be an object")


def test_wrapper_with_other_entries_refused():
    with pytest.raises(InvalidAnswer) as e:
        check_answer(ENGINE_PROMPT, {"answers": {"n": 4}, "n": 5})
    assert "besides answers: n" in e.value.message


def test_a_field_named_answers():
    p = prompt(field("answers", "string"), field("other", "int", 1))
    assert check_answer(p, {"answers": "yes"}) == {"answers": "yes", "other": 1}
    assert check_answer(p, {"answers": {"answers": "yes"}}) == {"answers": "yes", "other": 1}
    with pytest.raises(InvalidAnswer, match="must be a string"):
        check_answer(p, {"answers": 3})


# -- the prompt ------------------------------------------------------------------------------


@pytest.mark.parametrize("bad", [
    None,
    [],
    "question",
    {"title": "x"},
    {"title": "x", "fields": []},
    {"title": "x", "fields": {"name": "a", "type": "string"}},
    {"title": "x", "fields": ["a"]},
    prompt({"type": "string"}),
    prompt(field("1a", "string")),
    prompt(field("a", "string"), field("a", "int")),
    prompt(field("a", "float")),
    prompt({"name": "a"}),
    prompt(field("a", "choice")),
    prompt(field("a", "choice", choices=[])),
    prompt(field("a", "choice", choices=["x", 1])),
    prompt(field("a", "choice", "z", choices=["x", "y"])),
    prompt(field("a", "int", "three")),
    prompt(field("a", "int", 3.0)),
    prompt(field("a", "boolean", 0)),
])
def test_malformed_prompt(bad):
    with pytest.raises(PromptUnreadable) as e:
        check_answer(bad, {})
    assert isinstance(e.value, KreeError) and not isinstance(e.value, InvalidAnswer)
    assert e.value.status == 409 and e.value.code == "prompt_unreadable"
    assert e.value.message.startswith("the job's prompt cannot be answered: ")
    assert e.value.to_json()["error"]["code"] == "prompt_unreadable"


def test_prompt_read_leniently_where_it_does_not_matter():
    # No label, no default key, no title, an unknown extra entry, a long string default.
    p = {"fields": [{"name": "a", "type": "string", "help": "?", "default": "d" * (MAX_STRING + 5)},
                    {"name": "b", "type": "int"}]}
    assert read_prompt(p)[1] == {"name": "b", "type": "int", "label": "b", "default": None}
    assert check_answer(p, {"b": 1}) == {"a": "d" * (MAX_STRING + 5), "b": 1}


def test_error_json_shape():
    with pytest.raises(InvalidAnswer) as e:
        check_answer(ENGINE_PROMPT, {"n": "four"})
    assert e.value.to_json() == {"error": {
        "code": "invalid_answer",
        "message": 'the answer for field n must be an integer, not "four"',
        "details": {"field": "n", "fields": ["n"]}}}


# -- agreement with the engine ----------------------------------------------------------------


def engine_checker(p):
    """
    The engine's UserInput with the fields of prompt p, built as the engine
    builds them (UserInput._field), for calling its answer check (_check).
    """
    from kree.engine.actors.interaction import UserInput
    from kree.engine.model import Actor, WorkflowError

    actor = UserInput.__new__(UserInput)
    Actor.__init__(actor, "Ask", ".model.Ask", None, None)
    seen: set = set()
    actor.fields = [actor._field(i, dict(f), seen) for i, f in enumerate(p["fields"])]
    return actor, WorkflowError


AGREEMENT_PROMPTS = [ONE[k] for k in ONE] + [ENGINE_PROMPT, ALL,
                                             prompt(field("answers", "string"))]


def bodies():
    values = [v for _, _, v, _ in ACCEPTED] + [v for _, _, v in REFUSED] + [None, 2.0, -0.0]
    for p in AGREEMENT_PROMPTS:
        names = [f["name"] for f in p["fields"]]
        yield p, {}
        yield p, {"answers": {}}
        yield p, {"nope": 1}
        for name in names:
            for value in values:
                others = {n: v for n, v in zip(names, (1, "fast")) if n != name}
                yield p, {name: value}
                yield p, {"answers": {name: value}}
                yield p, {name: value, **others}


def test_answers_accepted_here_are_accepted_by_the_engine():
    accepted = refused = 0
    for p, body in bodies():
        actor, WorkflowError = engine_checker(p)
        try:
            result = check_answer(p, body)
        except InvalidAnswer:
            refused += 1
            # Refused here: the engine refuses the raw body too.
            with pytest.raises(WorkflowError):
                actor._check(body)
            continue
        accepted += 1
        # What we send is accepted as is, and the engine reads the raw body the same way.
        assert actor._check(result) == result, (p, body)
        assert actor._check(dict(body)) == result, (p, body)
    assert accepted > 50 and refused > 50


@pytest.mark.parametrize("kind,name,value", STRICTER)
def test_stricter_than_the_engine_only_where_documented(kind, name, value):
    actor, _ = engine_checker(ONE[kind])
    actor._check({name: value})  # the engine would take it
    with pytest.raises(InvalidAnswer):
        check_answer(ONE[kind], {name: value})
