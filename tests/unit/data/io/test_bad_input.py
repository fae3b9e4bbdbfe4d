"""Readers on bad input: every problem is a `DataError` or a per-line report, never a silent wrong result."""

from __future__ import annotations

import gzip
import json
import logging
from pathlib import Path

import numpy as np
import polars as pl
import pytest

from dynrec.data.dataset import InteractionData
from dynrec.data.io import ColumnMap, parse_columns, read_events, read_items
from dynrec.data.io.text import UNBALANCED_QUOTE
from dynrec.errors import DataError


def events_csv(n: int = 240) -> list[str]:
    return ["user_id,item_id,timestamp"] + [f"u{i % 7},i{i},{1000000 + i}" for i in range(n)]


def write_lines(p: Path, lines: list[str]) -> Path:
    p.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return p


# ---------------------------------------------------------------- CSV quoting


def test_unbalanced_quote_is_reported_at_its_line_and_the_rest_loads(tmp_path: Path) -> None:
    lines = events_csv()
    lines[3] = 'u0,"i5,1000002'  # line 4 of the file
    p = write_lines(tmp_path / "uq.csv", lines)
    log = read_events(p)
    assert len(log) == 239  # every other row is kept
    assert [(r.line, r.field, r.reason) for r in log.report.invalid] == [(4, "<row>", UNBALANCED_QUOTE)]
    assert log.frame["line"].to_list() == [n for n in range(2, 242) if n != 4]
    with pytest.raises(DataError, match="line 4.*unbalanced quote") as err:
        read_events(p, strict=True)
    assert err.value.line == 4


def test_two_stray_quotes_do_not_pair_up_and_swallow_the_rows_between(tmp_path: Path) -> None:
    lines = events_csv(12)
    lines[3] = 'u0,"i5,1000002'
    lines[7] = 'u1,"x,1000006'
    log = read_events(write_lines(tmp_path / "uq2.csv", lines))
    assert [(r.line, r.reason) for r in log.report.invalid] == [(4, UNBALANCED_QUOTE), (8, UNBALANCED_QUOTE)]
    assert len(log) == 10


def test_text_after_a_closing_quote_is_malformed_but_a_quoted_newline_is_fine(tmp_path: Path) -> None:
    text = 'user_id,item_id,timestamp\nu1,"ab"c,1\n"multi\nline",i2,2\nu3,i3,3\n'
    p = tmp_path / "m.csv"
    p.write_text(text)
    log = read_events(p)
    assert log.frame.select("user_id", "item_id", "line").rows() == [
        ("multi\nline", "i2", 3),
        ("u3", "i3", 5),
    ]
    [bad] = log.report.invalid
    assert bad.line == 2 and bad.reason.startswith("malformed quoting")


def test_broken_quote_in_item_csv(tmp_path: Path) -> None:
    p = tmp_path / "items.csv"
    p.write_text('item_id,title,genres\n1,"A, b",x|y\n2,"broken,z\n3,C,w\n')
    items = read_items(p)
    assert items.frame["item_id"].to_list() == ["1", "3"] and items.title("1") == "A, b"
    assert [(r.line, r.reason) for r in items.report.invalid] == [(3, UNBALANCED_QUOTE)]


# ---------------------------------------------------------------- encodings


def test_non_utf8_ids_are_reported_never_merged(tmp_path: Path) -> None:
    p = tmp_path / "enc.csv"
    p.write_bytes(b"user_id,item_id,timestamp\nu1,caf\xe9,1\nu2,caf\xe8,2\nu3,ok,3\n")
    log = read_events(p)
    assert log.frame["item_id"].to_list() == ["ok"]
    assert [(r.line, r.field) for r in log.report.invalid] == [(2, "<row>"), (3, "<row>")]
    assert all("not valid utf-8" in r.reason for r in log.report.invalid)
    with pytest.raises(DataError, match="line 2.*not valid utf-8") as err:
        read_events(p, strict=True)
    assert err.value.line == 2
    # with the file's real encoding both ids are read, and stay distinct
    latin = read_events(p, encoding="latin-1")
    assert latin.frame["item_id"].to_list() == ["café", "cafè", "ok"]


def test_undecodable_bytes_inside_a_quoted_multiline_record_reject_that_record(tmp_path: Path) -> None:
    p = tmp_path / "enc2.csv"
    p.write_bytes(b'user_id,item_id,timestamp\nu1,"a\nb\xff",1\nu2,c,2\n')
    log = read_events(p)
    assert log.frame["user_id"].to_list() == ["u2"]
    assert [(r.line, r.field) for r in log.report.invalid] == [(2, "<row>")]


def test_undecodable_lines_in_line_files_and_jsonl(tmp_path: Path) -> None:
    lf = tmp_path / "seq.txt"
    lf.write_bytes(b"1 a b\n2 \xffx y\n3 c d\n")
    log = read_events(lf)
    assert sorted(set(log.frame["user_id"].to_list())) == ["1", "3"]
    assert [r.line for r in log.report.invalid] == [2]
    jl = tmp_path / "e.jsonl"
    jl.write_bytes(b'{"user_id": "u", "item_id": "a", "timestamp": 1}\n{"user_id": "\xff", "item_id": "b"}\n')
    log = read_events(jl)
    assert len(log) == 1 and [r.line for r in log.report.invalid] == [2]


def test_undecodable_header_is_an_error(tmp_path: Path) -> None:
    p = tmp_path / "h.csv"
    p.write_bytes(b"user_id,item\xff,timestamp\nu,i,1\n")
    with pytest.raises(DataError, match="line 1.*header"):
        read_events(p)


# ---------------------------------------------------------------- column mapping and ratings


def test_parse_columns_spec_and_errors() -> None:
    cm = parse_columns("user=uid, item=movie,time=when,rating=stars,type=action")
    assert cm == ColumnMap(user="uid", item="movie", timestamp="when", value="stars", event_type="action")
    assert parse_columns("rating=r") == ColumnMap(value="r")
    assert parse_columns("user=u,item=i,time=") == ColumnMap(user="u", item="i", timestamp=None)
    with pytest.raises(
        DataError, match="unknown column key 'score'.*allowed keys: user, item, time, rating, type"
    ):
        parse_columns("user=u,score=s")
    with pytest.raises(DataError, match="not KEY=COLUMN"):
        parse_columns("user")
    with pytest.raises(DataError, match="given twice"):
        parse_columns("user=a,user=b")
    with pytest.raises(DataError, match="empty column name"):
        parse_columns("item=")


RATED = [
    {"uid": "a", "mid": "x", "when": 1, "stars": 4.5},
    {"uid": "a", "mid": "y", "when": 2, "stars": 2},
    {"uid": "b", "mid": "x", "when": 3, "stars": "bad"},
    {"uid": "b", "mid": "z", "when": 4, "stars": "inf"},
    {"uid": "c", "mid": "z", "when": 5, "stars": 3},
]
SPEC = "user=uid,item=mid,time=when,rating=stars"


def _write_rated(tmp_path: Path, fmt: str) -> Path:
    cols = ["uid", "mid", "when", "stars"]
    if fmt in ("csv", "tsv"):
        sep = "," if fmt == "csv" else "\t"
        body = [sep.join(cols)] + [sep.join(str(r[c]) for c in cols) for r in RATED]
        return write_lines(tmp_path / f"r.{fmt}", body)
    if fmt == "jsonl":
        return write_lines(tmp_path / "r.jsonl", [json.dumps(r) for r in RATED])
    if fmt == "recbole":
        body = ["uid:token\tmid:token\twhen:float\tstars:float"]
        body += ["\t".join(str(r[c]) for c in cols) for r in RATED]
        return write_lines(tmp_path / "r.inter", body)
    p = tmp_path / "r.parquet"
    pl.DataFrame({c: [str(r[c]) for r in RATED] for c in cols}).write_parquet(p)
    return p


@pytest.mark.parametrize("fmt", ["csv", "tsv", "jsonl", "recbole", "parquet"])
def test_declared_rating_column_becomes_the_validated_value(tmp_path: Path, fmt: str) -> None:
    log = read_events(_write_rated(tmp_path, fmt), columns=parse_columns(SPEC))
    assert log.frame.select("user_id", "item_id", "timestamp", "value").rows() == [
        ("a", "x", 1, 4.5),
        ("a", "y", 2, 2.0),
        ("c", "z", 5, 3.0),
    ]
    assert [(r.line, r.field, r.reason) for r in log.report.invalid] == [
        (3 if fmt == "parquet" else 4 - (fmt == "jsonl"), "stars", "value is missing, NaN or not a number"),
        (4 if fmt == "parquet" else 5 - (fmt == "jsonl"), "stars", "value is infinite"),
    ]


def test_rating_column_without_mapping_feeds_explicit_models(tmp_path: Path) -> None:
    p = write_lines(tmp_path / "r.csv", ["user_id,item_id,timestamp,rating", "a,x,1,5", "a,y,2,1", "b,x,3,3"])
    log = read_events(p)
    assert log.frame["value"].to_list() == [5.0, 1.0, 3.0]
    data = InteractionData.from_events(log)
    assert np.sort(data.values).tolist() == [1.0, 3.0, 5.0]  # what explicit MF trains on
    v = write_lines(tmp_path / "v.csv", ["user_id,item_id,timestamp,value", "a,x,1,2.5"])
    assert read_events(v).frame["value"].to_list() == [2.5]
    typed = write_lines(
        tmp_path / "t.csv", ["user_id,item_id,timestamp,event_type", "a,x,1,view", "a,x,1,buy"]
    )
    assert read_events(typed).frame["event_type"].to_list() == ["view", "buy"]  # not duplicates


# ---------------------------------------------------------------- duplicates


DUPS = [
    "user_id,item_id,timestamp",
    "u1,a,1",
    "u1,b,2",
    "u1,a,1",  # line 4 = line 2
    "u2,a,1",
    "u1,a,1",  # line 6 = line 2
    "u2,a,1",  # line 7 = line 5
]


def test_exact_duplicates_dropped_by_default_with_a_report(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    p = write_lines(tmp_path / "d.csv", DUPS)
    with caplog.at_level(logging.WARNING):
        log = read_events(p)
    assert log.frame["line"].to_list() == [2, 3, 5]
    rep = log.report
    assert (rep.n_valid, rep.exact_duplicates, rep.n_duplicates) == (3, 3, 3)
    assert rep.duplicate_lines == ((4, 2), (6, 2), (7, 5))
    assert "3 exact duplicate rows: line 4 (= line 2)" in caplog.text
    assert "3 exact duplicate rows" in rep.summary()
    kept = read_events(p, duplicates="keep")
    assert len(kept) == 6 and kept.report.exact_duplicates == 3 and kept.report.n_duplicates == 0
    with pytest.raises(DataError, match="line 4.*exact duplicate row.*line 2.*2 more"):
        read_events(p, duplicates="error")


def test_duplicates_in_value_or_type_are_not_exact(tmp_path: Path) -> None:
    p = write_lines(tmp_path / "d.csv", ["user_id,item_id,timestamp,rating", "u,a,1,5", "u,a,1,4"])
    assert len(read_events(p)) == 2


# ---------------------------------------------------------------- empty files, gzip


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ("user_id,item_id,timestamp\n", "no valid events: the file has no data rows"),
        (
            "user_id,item_id,timestamp\n,a,1\nb,,2\n",
            "no valid events: 2 invalid rows; first: line 2: field 'user_id'",
        ),
        ("", "empty"),
    ],
)
def test_no_valid_events_is_an_error(tmp_path: Path, text: str, match: str) -> None:
    p = tmp_path / "e.csv"
    p.write_text(text)
    with pytest.raises(DataError, match=match) as err:
        read_events(p)
    assert str(p) in str(err.value)


def test_empty_line_file_and_jsonl_are_errors(tmp_path: Path) -> None:
    (tmp_path / "s.txt").write_text("\n\n")
    (tmp_path / "e.jsonl").write_text('{"user_id": null, "item_id": "a", "timestamp": 1}\n')
    for name in ("s.txt", "e.jsonl"):
        with pytest.raises(DataError, match="no valid events"):
            read_events(tmp_path / name)


@pytest.mark.parametrize("name", ["e.csv.gz", "seq.txt.gz", "e.jsonl.gz", "u.data.gz"])
def test_truncated_gzip_names_the_file(tmp_path: Path, name: str) -> None:
    body = "user_id,item_id,timestamp\n" if name.startswith("e.csv") else ""
    body += "".join(f"{i} {i + 1}\n" for i in range(2000))
    data = gzip.compress(body.encode())
    p = tmp_path / name
    p.write_bytes(data[: len(data) // 2])
    with pytest.raises(DataError, match="truncated or corrupt gzip") as err:
        read_events(p)
    assert err.value.source == str(p)


def test_truncated_gzip_item_file(tmp_path: Path) -> None:
    data = gzip.compress(b"".join(b"%d::T::G\n" % i for i in range(3000)))
    p = tmp_path / "movies.dat.gz"
    p.write_bytes(data[:-20])
    with pytest.raises(DataError, match="truncated or corrupt gzip"):
        read_items(p)
