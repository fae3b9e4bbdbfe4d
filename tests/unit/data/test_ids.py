"""One id rule at every door (`dynrec.data.ids`): event files, item text files, events written to
a store, and the Python and Polars forms of the rule agree on every string."""

from __future__ import annotations

import string
from pathlib import Path

import polars as pl
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dynrec.data.events import Event, InvalidEventError, validate_events
from dynrec.data.ids import (
    MAX_ID_LENGTH,
    WHITESPACE,
    check_item_id,
    check_user_id,
    id_problem,
    id_problem_expr,
)
from dynrec.data.io import read_events
from dynrec.errors import DataError
from dynrec.online.store import InMemoryStore
from dynrec.text import read_item_texts

LONG = "x" * (MAX_ID_LENGTH + 1)


@pytest.mark.parametrize(
    ("value", "kind", "problem"),
    [
        ("u1", "user", None),
        ("a b", "user", None),  # inner spaces are fine
        ("a,b", "user", None),  # a user id may hold a comma (CSV quotes it)
        ("x" * MAX_ID_LENGTH, "item", None),
        ("", "user", "is empty or only whitespace"),
        ("  ", "item", "is empty or only whitespace"),
        (" u1", "user", "has leading or trailing whitespace"),
        ("u1\t", "user", "has leading or trailing whitespace"),
        ("i1\x1c", "item", "has leading or trailing whitespace"),  # str.isspace, missed by Polars' default
        ("\u3000i1", "item", "has leading or trailing whitespace"),
        (LONG, "user", f"is longer than {MAX_ID_LENGTH} characters"),
        ("a,b", "item", "holds a comma, newline or carriage return (not allowed in item ids)"),
        ("a\nb", "item", "holds a comma, newline or carriage return (not allowed in item ids)"),
        ("a\rb", "item", "holds a comma, newline or carriage return (not allowed in item ids)"),
        ("a\ud800b", "user", "holds a lone surrogate (not encodable as UTF-8)"),
        ("café ☕", "item", None),  # non-ASCII is fine
        ("é\udfff", "item", "holds a lone surrogate (not encodable as UTF-8)"),
    ],
)
def test_id_problem(value: str, kind: str, problem: str | None) -> None:
    assert id_problem(value, kind) == problem  # type: ignore[arg-type]


def test_check_names_the_field() -> None:
    assert check_user_id("u1") == "u1"
    with pytest.raises(DataError, match=r"^f.csv:line 3 field 'who': user id ' u1' has leading"):
        check_user_id(" u1", field="who", source="f.csv", line=3)
    with pytest.raises(DataError, match="field 'item_id': item id must be a string, got int"):
        check_item_id(5)


_chars = st.sampled_from([*string.ascii_letters[:6], *WHITESPACE[:12], ",", "\n", "\r", "é", "\u3000"])


@settings(derandomize=True, max_examples=400, deadline=None, database=None)
@given(
    values=st.lists(st.text(_chars, max_size=6), min_size=1, max_size=20),
    kind=st.sampled_from(["user", "item"]),
)
def test_polars_rule_is_the_python_rule(values: list[str], kind: str) -> None:
    got = pl.DataFrame({"v": values}).select(id_problem_expr("v", kind).alias("p"))["p"].to_list()  # type: ignore[arg-type]
    assert got == [id_problem(v, kind) for v in values]  # type: ignore[arg-type]


def test_event_files_refuse_ids_that_break_the_rule(tmp_path: Path) -> None:
    p = tmp_path / "e.csv"
    p.write_text(
        "user_id,item_id,timestamp\n"
        "u1,i1,1\n"
        " u1,i2,2\n"  # before: stripped, merged with u1
        'u2,"a,b",3\n'
        f"u3,{LONG},4\n"
        "u4,i4 ,5\n"
    )
    log = read_events(p)
    assert log.frame["user_id"].to_list() == ["u1"] and log.frame["item_id"].to_list() == ["i1"]
    assert [(r.line, r.field, r.reason) for r in log.report.invalid] == [
        (3, "user_id", "user id has leading or trailing whitespace"),
        (4, "item_id", "item id holds a comma, newline or carriage return (not allowed in item ids)"),
        (5, "item_id", f"item id is longer than {MAX_ID_LENGTH} characters"),
        (6, "item_id", "item id has leading or trailing whitespace"),
    ]
    with pytest.raises(DataError, match=r"e.csv:line 3 field 'user_id': user id has leading or trailing"):
        read_events(p, strict=True)


def test_item_text_files_refuse_ids_that_break_the_rule(tmp_path: Path) -> None:
    p = tmp_path / "items.csv"
    p.write_text(f'item_id,text\nok,fine\n pad,x\n"a,b",y\n"a\nb",z\n{"y" * 100_000},w\n')
    texts = read_item_texts(p)
    assert list(texts.texts) == ["ok"]
    assert [(r.line, r.field) for r in texts.report.invalid] == [
        (3, "item_id"),
        (4, "item_id"),
        (5, "item_id"),
        (7, "item_id"),
    ]
    reasons = [r.reason for r in texts.report.invalid]
    assert reasons[0] == "item id has leading or trailing whitespace"
    assert (
        reasons[1]
        == reasons[2]
        == "item id holds a comma, newline or carriage return (not allowed in item ids)"
    )
    assert reasons[3] == f"item id is longer than {MAX_ID_LENGTH} characters"
    with pytest.raises(DataError, match=r"items.csv:line 3 field 'item_id': item id has leading"):
        read_item_texts(p, strict=True)


@pytest.mark.parametrize(
    ("event", "field"),
    [
        (Event(" u1", "i1", 1), "user_id"),
        (Event("u1", "i1 ", 1), "item_id"),
        (Event("u1", "a,b", 1), "item_id"),
        (Event(LONG, "i1", 1), "user_id"),
    ],
)
def test_store_writes_refuse_ids_that_break_the_rule(event: Event, field: str) -> None:
    with pytest.raises(InvalidEventError) as info:
        validate_events([Event("u0", "i0", 1), event])
    assert info.value.index == 1 and info.value.field == field
    store = InMemoryStore()
    with pytest.raises(InvalidEventError):
        store.append([event])
    assert len(store.history(event.user_id)) == 0
