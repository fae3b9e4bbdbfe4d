"""The one-pass reader of regular CSV/TSV files gives exactly what the general record splitter gives,
and anything it cannot prove regular goes to the splitter (which reports each irregular row)."""

from __future__ import annotations

from pathlib import Path

import pytest

from dynrec.data.events import MISSING_ITEM, EventLog
from dynrec.data.io import read_events
from dynrec.data.io import readers as ev

REGULAR = (
    "user_id,item_id,timestamp,event_type,rating\n"
    "u1,i1,10,click,1\n"
    "u2, i2 ,11,,2.5\n"  # a whitespace-padded id: refused by both paths (the id rule)
    "u1,i3,12,view,3\n"
    "u1,i1,10,click,1\n"  # exact duplicate of line 2
    "u3,,13,click,1\n"  # missing item
    "u4,i4,x,click,1"  # bad timestamp, no final newline
)


def both(path: Path, monkeypatch: pytest.MonkeyPatch, **kw: object) -> tuple[EventLog, EventLog, bool]:
    """(fast read, general read, whether the fast path took the file)."""
    took: list[bool] = []
    real = ev._regular_table

    def spy(*a: object, **k: object) -> object:
        out = real(*a, **k)  # type: ignore[arg-type]
        took.append(out is not None)
        return out

    monkeypatch.setattr(ev, "_regular_table", spy)
    fast = read_events(path, **kw)  # type: ignore[arg-type]
    monkeypatch.setattr(ev, "_regular_table", lambda *a, **k: None)
    slow = read_events(path, **kw)  # type: ignore[arg-type]
    return fast, slow, took == [True]


def test_regular_csv_same_as_general(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    p = tmp_path / "e.csv"
    p.write_text(REGULAR)
    fast, slow, took = both(p, monkeypatch)
    assert took
    assert fast.frame.equals(slow.frame) and fast.report == slow.report
    # hand-checked: lines 2 and 4 kept, line 5 a dropped duplicate of 2, 3, 6 and 7 invalid
    assert fast.frame["line"].to_list() == [2, 4]
    assert fast.frame["item_id"].to_list() == ["i1", "i3"]
    assert fast.frame["event_type"].to_list() == ["click", "view"]
    assert fast.frame["value"].to_list() == [1.0, 3.0]
    assert [(r.line, r.field) for r in fast.report.invalid] == [
        (3, "item_id"),
        (6, "item_id"),
        (7, "timestamp"),
    ]
    assert fast.report.invalid[0].reason == "item id has leading or trailing whitespace"
    assert fast.report.invalid[1].reason == MISSING_ITEM
    assert fast.report.exact_duplicates == 1 and fast.report.duplicate_lines == ((5, 2),)


def test_tsv_with_literal_quotes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    p = tmp_path / "e.tsv"
    p.write_text('user_id\titem_id\ttimestamp\nu1\t"i1\t5\nu2\ti2"\t6\n')
    fast, slow, took = both(p, monkeypatch)
    assert took and fast.frame.equals(slow.frame)
    assert fast.frame["item_id"].to_list() == ['"i1', 'i2"']


@pytest.mark.parametrize(
    "text",
    [
        # a 5-field and a 3-field row: the separator total matches the header's, the rows do not
        "user_id,item_id,timestamp\nu1,i1,1,x,y\nu2,i2\nu3,i3,3\n",
        "user_id,item_id,timestamp\nu1,i1,1\n\nu2,i2,2\n",  # blank line: numbering must skip it
        "user_id,item_id,timestamp\r\nu1,i1,1\r\nu2,i2,2\r\n",  # CRLF
        'user_id,item_id,timestamp\nu1,"i,1",1\nu2,i2,2\n',  # quoted separator
        "user_id,item_id,timestamp\nu1,i1,1\nu2,i2,2\n   \n",  # whitespace-only last line
        "user_id,item_id,timestamp\nu1,i1\nu2,i2,2\n",  # too few fields
    ],
)
def test_irregular_files_take_the_general_path(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, text: str
) -> None:
    p = tmp_path / "e.csv"
    p.write_bytes(text.encode())
    fast, slow, took = both(p, monkeypatch)
    assert not took
    assert fast.frame.equals(slow.frame) and fast.report == slow.report


def test_balanced_wrong_counts_reported_per_line(tmp_path: Path) -> None:
    p = tmp_path / "e.csv"
    p.write_text("user_id,item_id,timestamp\nu1,i1,1,x,y\nu2,i2\nu3,i3,3\n")
    log = read_events(p)
    assert [(r.line, r.reason) for r in log.report.invalid] == [
        (2, "expected 3 fields, found 5"),
        (3, "expected 3 fields, found 2"),
    ]
    assert log.frame["user_id"].to_list() == ["u3"]
