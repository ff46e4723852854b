"""
The one events-file follower every backend uses (kree.backends.eventfile.EventTail),
on real files: complete lines only, a count of lines consumed that matches
what the store records, and a restart that resumes from that count.
"""

from __future__ import annotations

import json

from kree.backends.eventfile import EventTail, write_answer_file


def append(path, text: str) -> None:
    with open(path, "ab") as f:
        f.write(text.encode())


def line(**fields) -> str:
    return json.dumps(fields) + "\n"


def test_no_file_yet_is_no_lines(tmp_path):
    tail = EventTail(tmp_path / "events.jsonl", 0)
    assert tail.read() == []
    assert tail.consumed == 0
    append(tmp_path / "events.jsonl", line(type="started"))
    assert tail.read() == [{"type": "started"}]
    assert tail.consumed == 1


def test_a_partial_last_line_waits_for_its_newline(tmp_path):
    path = tmp_path / "events.jsonl"
    tail = EventTail(path, 0)
    append(path, line(type="started") + '{"type": "progress", "fir')
    assert tail.read() == [{"type": "started"}]
    assert tail.consumed == 1
    assert tail.read() == []
    append(path, 'ings": 3}')
    assert tail.read() == []
    append(path, "\n")
    assert tail.read() == [{"type": "progress", "firings": 3}]
    assert tail.consumed == 2
    assert not tail.saw_end


def test_resuming_from_a_count_skips_the_lines_applied(tmp_path):
    path = tmp_path / "events.jsonl"
    append(path, line(n=1) + line(n=2) + line(n=3) + '{"n": 4')
    tail = EventTail(path, 2)
    assert tail.read() == [{"n": 3}]
    assert tail.consumed == 3
    append(path, "}\n" + line(type="end", code=0))
    assert tail.read() == [{"n": 4}, {"type": "end", "code": 0}]
    assert tail.consumed == 5
    assert tail.saw_end


def test_resuming_past_the_lines_written_waits_for_more(tmp_path):
    # The store counted lines the file does not have (yet): those to come
    # are skipped until the count is reached, as before the restart.
    path = tmp_path / "events.jsonl"
    append(path, line(n=1))
    tail = EventTail(path, 2)
    assert tail.read() == []
    append(path, line(n=2) + line(n=3))
    assert tail.read() == [{"n": 3}]
    assert tail.consumed == 3


def test_unreadable_lines_become_warnings_and_still_count(tmp_path):
    path = tmp_path / "events.jsonl"
    append(path, "not json\n" + "[1, 2]\n" + "\n" + line(n=1))
    tail = EventTail(path, 0)
    lines = tail.read()
    assert [entry.get("text") for entry in lines] == [
        "the engine wrote an unreadable event line",
        "the engine wrote an event line that is not an object",
        "the engine wrote an unreadable event line",
        None,
    ]
    assert all(entry["type"] == "message" and entry["level"] == "warning"
               and entry["actor"] == "kree" for entry in lines[:3])
    assert lines[3] == {"n": 1}
    # One record per line, so a restart from this count lands on the next line.
    assert tail.consumed == 4
    append(path, line(n=2))
    assert EventTail(path, tail.consumed).read() == [{"n": 2}]


def test_a_truncated_file_yields_nothing_more(tmp_path):
    # The engine only appends; a file cut short by someone else is not
    # read again from its start (no line is applied twice).
    path = tmp_path / "events.jsonl"
    append(path, line(n=1) + line(n=2))
    tail = EventTail(path, 0)
    assert len(tail.read()) == 2
    path.write_text(line(n=9))
    assert tail.read() == []
    assert tail.consumed == 2


def test_answers_are_written_whole(tmp_path):
    write_answer_file(tmp_path, 3, b'{"x": 1}\n')
    answers = tmp_path / "answers"
    assert (answers / "3.json").read_bytes() == b'{"x": 1}\n'
    assert [p.name for p in answers.iterdir()] == ["3.json"]
    # Readable by an engine that runs under an account of its own (kree.sandbox).
    assert answers.stat().st_mode & 0o777 == 0o755
    assert (answers / "3.json").stat().st_mode & 0o777 == 0o644
