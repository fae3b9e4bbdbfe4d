"""Readers: every format, hand-checked validation reports on tiny fixtures."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import numpy as np
import pandas as pd
import polars as pl
import pytest

from dynrec.data.dataset import InteractionData
from dynrec.data.events import (
    BAD_TIMESTAMP,
    BAD_VALUE,
    MISSING_ITEM,
    MISSING_USER,
    NEGATIVE_TIMESTAMP,
    NONFINITE_TIMESTAMP,
    InvalidRow,
)
from dynrec.data.io import (
    ColumnMap,
    ItemColumns,
    detect_format,
    from_dataframe,
    items_from_dataframe,
    read_events,
    read_items,
)
from dynrec.data.vocab import Vocabulary
from dynrec.errors import DataError

WEIGHTS = {"view": 1.0, "click": 2.0, "purchase": 5.0}
CM = ColumnMap(user="user", item="item", timestamp="ts", event_type="action", value="rating")


def write(tmp_path: Path, name: str, text: str, encoding: str = "utf-8") -> Path:
    p = tmp_path / name
    data = text.encode(encoding)
    p.write_bytes(gzip.compress(data) if name.endswith(".gz") else data)
    return p


def rows(log: object) -> list[tuple[object, ...]]:
    frame = log.frame  # type: ignore[attr-defined]
    return frame.select("user_id", "item_id", "timestamp", "event_type", "value").rows()


# ---------------------------------------------------------------- CSV: the hand-checked report

CSV_10 = """user,item,ts,action,rating
u1,i1,100,view,1
u1,i2,101,click,2
,i3,102,view,1
u2,i1,abc,view,1
u2,i2,103,purchase,5
u3,i1,104,view,NaN
u3,i2,105,click,3,extra
u3,i3,106,view,4
u4,i1,107,purchase,5
u4,i2,108,view,1
"""


def test_csv_ten_rows_four_bad_in_four_ways(tmp_path: Path) -> None:
    p = write(tmp_path, "events.csv", CSV_10)
    log = read_events(p, columns=CM, event_types=WEIGHTS)
    src = str(p)
    assert log.report.invalid == (
        InvalidRow(src, 4, "user", MISSING_USER),
        InvalidRow(src, 5, "ts", BAD_TIMESTAMP),
        InvalidRow(src, 7, "rating", BAD_VALUE),
        InvalidRow(src, 8, "<row>", "expected 5 fields, found 6"),
    )
    assert log.report.n_valid == 6 and len(log) == 6
    assert rows(log) == [
        ("u1", "i1", 100, "view", 1.0),
        ("u1", "i2", 101, "click", 2.0),
        ("u2", "i2", 103, "purchase", 5.0),
        ("u3", "i3", 106, "view", 4.0),
        ("u4", "i1", 107, "purchase", 5.0),
        ("u4", "i2", 108, "view", 1.0),
    ]
    assert log.frame["line"].to_list() == [2, 3, 6, 9, 10, 11]
    assert log.frame["row"].is_sorted() and log.has_time
    assert log.event_weights == WEIGHTS
    assert log.weights().to_list() == [1.0, 2.0, 5.0, 1.0, 5.0, 1.0]
    data = InteractionData.from_events(log, event_weights=log.event_weights)
    assert sorted(data.weights.tolist()) == [1.0, 1.0, 1.0, 2.0, 5.0, 5.0]


def test_strict_raises_naming_file_line_field(tmp_path: Path) -> None:
    p = write(tmp_path, "events.csv", CSV_10)
    with pytest.raises(DataError) as err:
        read_events(p, columns=CM, event_types=WEIGHTS, strict=True)
    msg = str(err.value)
    assert str(p) in msg and "line 4" in msg and "'user'" in msg and "3 more invalid rows" in msg
    assert (err.value.line, err.value.field) == (4, "user")


def test_negative_timestamp_unknown_event_type_and_nonfinite(tmp_path: Path) -> None:
    text = "user,item,ts,action,rating\nu1,i1,-5,view,1\nu1,i2,7,like,1\nu1,i3,inf,view,1\nu1,i4,1,view,inf\n"
    log = read_events(write(tmp_path, "e.csv", text + "u1,i5,9,view,2\n"), columns=CM, event_types=WEIGHTS)
    got = [(r.line, r.field, r.reason) for r in log.report.invalid]
    assert got == [
        (2, "ts", NEGATIVE_TIMESTAMP),
        (3, "action", "unknown event type (allowed: click, purchase, view)"),
        (4, "ts", NONFINITE_TIMESTAMP),
        (5, "rating", "value is infinite"),
    ]
    assert len(log) == 1 and log.report.n_invalid == 4
    # nothing valid at all: an error carrying the count and the first problem, not an empty log
    with pytest.raises(DataError, match="no valid events: 4 invalid rows; first: line 2: field 'ts'"):
        read_events(write(tmp_path, "bad.csv", text), columns=CM, event_types=WEIGHTS)


def test_timestamp_parsing_rules(tmp_path: Path) -> None:
    text = (
        "user_id,item_id,timestamp\n"
        "a,1,1.9\n"  # fractional seconds truncated
        "a,2,1e3\n"
        "a,3,1700000000123456789\n"  # exact beyond float precision
        "a,4, 42 \n"  # whitespace stripped
        "a,5,2020-01-01T02:00:00+02:00\n"  # ISO with offset
        "a,6,2020-01-01\n"  # naive date = UTC midnight
        "a,7,yesterday\n"
    )
    log = read_events(write(tmp_path, "t.csv", text))
    assert log.frame["timestamp"].to_list() == [1, 1000, 1700000000123456789, 42, 1577836800, 1577836800]
    assert [(r.line, r.field) for r in log.report.invalid] == [(8, "timestamp")]


def test_tsv_crlf_blank_lines_and_separator_override(tmp_path: Path) -> None:
    text = "user_id\titem_id\ttimestamp\r\n\r\na\t1\t5\r\n   \r\nb\t\t6\r\nb\t2\t7\r\n"
    log = read_events(write(tmp_path, "e.tsv", text))
    assert rows(log) == [("a", "1", 5, "interaction", 1.0), ("b", "2", 7, "interaction", 1.0)]
    assert log.frame["line"].to_list() == [3, 6]
    assert [(r.line, r.field, r.reason) for r in log.report.invalid] == [(5, "item_id", MISSING_ITEM)]
    semi = read_events(write(tmp_path, "s.csv", "user_id;item_id;timestamp\nx;y;1\n"), separator=";")
    assert rows(semi) == [("x", "y", 1, "interaction", 1.0)]


def test_quoted_csv_with_embedded_separator_and_newline(tmp_path: Path) -> None:
    text = 'user_id,item_id,timestamp,note\n"u,1",i1,10,"two\nlines"\nu2,i2,11,x,y\nu3,"i3",12,"ok"\n'
    log = read_events(write(tmp_path, "q.csv", text))
    assert rows(log) == [("u,1", "i1", 10, "interaction", 1.0), ("u3", "i3", 12, "interaction", 1.0)]
    # the quoted record spans lines 2-3, so the ragged row is on line 4 and the last on line 5
    assert log.frame["line"].to_list() == [2, 5]
    assert [(r.line, r.reason) for r in log.report.invalid] == [(4, "expected 4 fields, found 5")]


def test_quoted_csv_single_line_records_escapes_and_ragged_rows(tmp_path: Path) -> None:
    text = '"user_id","item_id","timestamp"\n"say ""hi"", ok","i1",1\n"u2","a,b",2,9\nu3,"",3\nu4,plain,4\n'
    log = read_events(write(tmp_path, "q.csv", text))
    assert rows(log) == [
        ('say "hi", ok', "i1", 1, "interaction", 1.0),
        ("u4", "plain", 4, "interaction", 1.0),
    ]
    assert log.frame["line"].to_list() == [2, 5]
    assert [(r.line, r.field, r.reason) for r in log.report.invalid] == [
        (3, "<row>", "expected 3 fields, found 4"),
        (4, "item_id", MISSING_ITEM),
    ]


def test_missing_column_and_event_types_without_column(tmp_path: Path) -> None:
    p = write(tmp_path, "e.csv", "user,item\nu,i\n")
    with pytest.raises(DataError, match="column 'ts' not found \\(header: \\['user', 'item'\\]\\)"):
        read_events(p, columns=ColumnMap(user="user", item="item", timestamp="ts"))
    with pytest.raises(DataError, match="no event type column"):
        read_events(p, columns=ColumnMap(user="user", item="item", timestamp=None), event_types=WEIGHTS)
    order_only = read_events(p, columns=ColumnMap(user="user", item="item", timestamp=None))
    assert not order_only.has_time and rows(order_only) == [("u", "i", 0, "interaction", 1.0)]


def test_file_errors(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="file not found"):
        read_events(tmp_path / "nope.csv")
    with pytest.raises(DataError, match="unknown file format"):
        read_events(write(tmp_path, "x.xyz", "a"))
    with pytest.raises(DataError, match="item metadata"):
        read_events(write(tmp_path, "u.item", "1|x"))
    with pytest.raises(DataError, match="empty"):
        read_events(write(tmp_path, "empty.csv", "\n\n"))


def test_invalid_utf8_is_reported_per_line_not_merged(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # undecodable bytes are never replaced (that would merge distinct ids): the row is reported
    p = tmp_path / "bad.csv"
    p.write_bytes(b"user_id,item_id,timestamp\nu\xff,i,1\nv,j,2\n")
    log = read_events(p)
    assert log.frame["user_id"].to_list() == ["v"]
    assert [(r.line, r.field) for r in log.report.invalid] == [(2, "<row>")]
    assert "not valid utf-8" in log.report.invalid[0].reason
    assert "bad.csv:2" in caplog.text
    assert read_events(p, encoding="latin-1").frame["user_id"].to_list() == ["u\xff", "v"]


# ---------------------------------------------------------------- JSONL, Parquet, DataFrames


def test_jsonl_fast_path_and_iso_times(tmp_path: Path) -> None:
    lines = [
        {"user_id": 1, "item_id": "a", "timestamp": "2020-01-01T00:00:00Z", "value": 4.5},
        {"user_id": 2, "item_id": "b", "timestamp": 1577836801},
        {"user_id": 3, "item_id": None, "timestamp": 5},
    ]
    text = "\n".join(json.dumps(r) for r in lines) + "\n\n"
    log = read_events(write(tmp_path, "e.jsonl", text), columns=ColumnMap(value="value"))
    assert rows(log) == [("1", "a", 1577836800, "interaction", 4.5)]
    assert [(r.line, r.field, r.reason) for r in log.report.invalid] == [
        (2, "value", BAD_VALUE),
        (3, "item_id", MISSING_ITEM),
    ]


def test_jsonl_broken_lines_are_reported_and_the_rest_kept(tmp_path: Path) -> None:
    text = (
        '{"user_id": "u", "item_id": "a", "timestamp": 1}\n'
        '{"user_id": "u", "item_id": \n'
        "[1, 2]\n"
        '{"user_id": "v", "item_id": 7.0, "timestamp": 2}\n'
        '{"user_id": "w", "timestamp": 3}\n'
    )
    log = read_events(write(tmp_path, "e.jsonl.gz", text))
    assert rows(log) == [("u", "a", 1, "interaction", 1.0), ("v", "7", 2, "interaction", 1.0)]
    got = [(r.line, r.field, r.reason.split(":")[0]) for r in log.report.invalid]
    assert got == [
        (2, "<row>", "invalid JSON"),
        (3, "<row>", "not a JSON object"),
        (5, "item_id", MISSING_ITEM),
    ]


def test_parquet_reports_row_numbers(tmp_path: Path) -> None:
    p = tmp_path / "e.parquet"
    pl.DataFrame(
        {"u": ["a", "b", "c"], "i": ["x", None, "z"], "t": [1, 2, 3], "r": [1.0, 2.0, float("nan")]}
    ).write_parquet(p)
    log = read_events(p, columns=ColumnMap(user="u", item="i", timestamp="t", value="r"))
    assert rows(log) == [("a", "x", 1, "interaction", 1.0)]
    assert [(r.line, r.field) for r in log.report.invalid] == [(2, "i"), (3, "r")]


def test_pandas_dataframe_ids_datetimes_and_mixed_objects() -> None:
    df = pd.DataFrame(
        {
            "uid": [1.0, np.nan, 3.0, 4.0],  # an int column with a hole, as pandas stores it
            "iid": pd.Series([10, "b", "c", None], dtype=object),
            "when": pd.to_datetime(
                ["2020-01-01T00:00:00Z", "2020-01-01T00:00:01Z", None, "2020-01-01"],
                utc=True,
                format="ISO8601",
            ),
        }
    )
    log = from_dataframe(df, columns=ColumnMap(user="uid", item="iid", timestamp="when"))
    assert rows(log) == [("1", "10", 1577836800, "interaction", 1.0)]
    assert [(r.line, r.field) for r in log.report.invalid] == [(2, "uid"), (3, "when"), (4, "iid")]


def test_polars_dataframe_with_event_types() -> None:
    df = pl.DataFrame(
        {"u": ["a", "a", "b"], "i": ["x", "y", "x"], "e": ["view", "buy", "click"], "t": [3, 2, 1]}
    )
    log = from_dataframe(
        df, columns=ColumnMap(user="u", item="i", timestamp="t", event_type="e"), event_types=WEIGHTS
    )
    assert rows(log) == [("a", "x", 3, "view", 1.0), ("b", "x", 1, "click", 1.0)]
    assert log.weights().to_list() == [1.0, 2.0]
    assert [(r.line, r.field) for r in log.report.invalid] == [(2, "e")]
    with pytest.raises(DataError, match="line 2"):
        from_dataframe(
            df,
            columns=ColumnMap(user="u", item="i", timestamp="t", event_type="e"),
            event_types=WEIGHTS,
            strict=True,
        )


# ---------------------------------------------------------------- RecBole and MovieLens


def test_recbole_inter(tmp_path: Path) -> None:
    text = (
        "user_id:token\titem_id:token\trating:float\ttimestamp:float\n"
        "1\t10\t4\t881250949\n"
        "2\t20\t\t881250950\n"
        "3\t30\t5\n"
        "4\t40\t3\t881250951.0\n"
    )
    log = read_events(write(tmp_path, "x.inter", text))
    assert rows(log) == [
        ("1", "10", 881250949, "interaction", 4.0),
        ("4", "40", 881250951, "interaction", 3.0),
    ]
    assert [(r.line, r.field, r.reason) for r in log.report.invalid] == [
        (3, "rating", BAD_VALUE),
        (4, "<row>", "expected 4 fields, found 3"),
    ]


def test_movielens_u_data(tmp_path: Path) -> None:
    text = "196\t242\t3\t881250949\n186\t302\t3\n22\t377\tx\t878887116\n244\t51\t2\t880606923\n"
    log = read_events(write(tmp_path, "u.data", text))
    assert rows(log) == [
        ("196", "242", 881250949, "interaction", 3.0),
        ("244", "51", 880606923, "interaction", 2.0),
    ]
    assert [(r.line, r.field) for r in log.report.invalid] == [(2, "<row>"), (3, "value")]
    assert detect_format(tmp_path / "u1.base") == "ml-100k"


def test_movielens_ratings_dat(tmp_path: Path) -> None:
    text = "1::1193::5::978300760\n1::661::3\n1::914::3::-1\n2::1357::5::978298709\n"
    log = read_events(write(tmp_path, "ratings.dat", text))
    assert rows(log) == [
        ("1", "1193", 978300760, "interaction", 5.0),
        ("2", "1357", 978298709, "interaction", 5.0),
    ]
    assert [(r.line, r.field, r.reason) for r in log.report.invalid] == [
        (2, "<row>", "expected 4 fields, found 3"),
        (3, "timestamp", NEGATIVE_TIMESTAMP),
    ]


# ---------------------------------------------------------------- line files


def test_per_user_lines_gzipped(tmp_path: Path) -> None:
    text = "1 5 6 7\n2 5\n3\n\n4  9\t8 \n1 10\n"
    p = write(tmp_path, "Beauty.txt.gz", text)
    assert detect_format(p) == "user-lines"
    log = read_events(p)
    assert not log.has_time
    assert rows(log) == [
        ("1", "5", 0, "interaction", 1.0),
        ("1", "6", 1, "interaction", 1.0),
        ("1", "7", 2, "interaction", 1.0),
        ("2", "5", 0, "interaction", 1.0),
        ("4", "9", 0, "interaction", 1.0),
        ("4", "8", 1, "interaction", 1.0),
        ("1", "10", 3, "interaction", 1.0),  # a user's later line continues its sequence
    ]
    assert log.frame["line"].to_list() == [1, 1, 1, 2, 5, 5, 6]
    assert [(r.line, r.reason) for r in log.report.invalid] == [(3, "expected at least 2 fields, found 1")]


def test_pair_lines_time_is_file_order_per_user(tmp_path: Path) -> None:
    text = "1 10\n2 20\n1 11\n1 12 13\n2 21\n"
    p = write(tmp_path, "ml.txt", text)
    assert detect_format(p) == "user-lines"  # a 3-field line makes it look per-user
    log = read_events(p, format="pair-lines")
    assert rows(log) == [
        ("1", "10", 0, "interaction", 1.0),
        ("2", "20", 0, "interaction", 1.0),
        ("1", "11", 1, "interaction", 1.0),
        ("2", "21", 1, "interaction", 1.0),
    ]
    assert [(r.line, r.reason) for r in log.report.invalid] == [(4, "expected 2 fields, found 3")]
    assert detect_format(write(tmp_path, "pairs.txt", "1 2\n3 4\n")) == "pair-lines"


# ---------------------------------------------------------------- item metadata


def _u_item_line(item: str, title: str, genres: set[int]) -> str:
    flags = "|".join("1" if g in genres else "0" for g in range(19))
    return f"{item}|{title}|01-Jan-1995||http://imdb/{item}|{flags}"


def test_u_item_latin1_genres_and_problems(tmp_path: Path) -> None:
    text = "\n".join(
        [
            _u_item_line("1", "Toy Story (1995)", {3, 4, 5}),
            _u_item_line("2", "Café Society (1995)", {8}),
            "3|Broken|01-Jan-1995",
            _u_item_line("1", "Duplicate", {1}),
            _u_item_line("4", "No genre", set()),
        ]
    )
    items = read_items(write(tmp_path, "u.item", text + "\n", encoding="latin-1"))
    assert len(items) == 3
    assert items.title("2") == "Café Society (1995)"
    assert items.genres("1") == ["Animation", "Children's", "Comedy"]
    assert items.genres("4") == [] and items.genres("nope") == [] and items.title("nope") is None
    assert items.frame.filter(pl.col("item_id") == "1")["video_release_date"].to_list() == [None]
    assert [(r.line, r.field, r.reason) for r in items.report.invalid] == [
        (3, "<row>", "expected 24 fields, found 3"),
        (4, "item_id", "duplicate item id (first at line 1)"),
    ]


def test_movies_dat_latin1_line_numbers_survive_nel_byte(tmp_path: Path) -> None:
    # 0x85 is "…" in cp1252 but U+0085 (NEL) in Latin-1, which str.splitlines() treats as a line break
    data = b"1::Toy Story (1995)::Animation|Children's|Comedy\n2::Caf\xe9 \x85 (1995)::Drama\n3::Bad\n"
    p = tmp_path / "movies.dat"
    p.write_bytes(data)
    items = read_items(p)
    assert items.title("2") == "Café \x85 (1995)" and items.genres("2") == ["Drama"]
    assert [(r.line, r.reason) for r in items.report.invalid] == [(3, "expected 3 fields, found 2")]
    with pytest.raises(DataError, match="line 3"):
        read_items(p, strict=True)


def test_recbole_item_and_genre_matrix(tmp_path: Path) -> None:
    text = (
        "item_id:token\tmovie_title:token_seq\trelease_year:token\tclass:token_seq\n"
        "1\tToy Story\t1995\tAnimation Children's Comedy\n"
        "2\tGoldenEye\t1995\tAction Adventure\n"
        "\tNo id\t1990\tDrama\n"
    )
    items = read_items(write(tmp_path, "ml.item", text))
    assert items.genres("2") == ["Action", "Adventure"] and items.title("1") == "Toy Story"
    assert items.extra_columns == ["release_year"]
    assert [(r.line, r.reason) for r in items.report.invalid] == [(4, "missing item id")]
    vocab = Vocabulary(["2", "9", "1"])  # "9" has no metadata
    m, names = items.genre_matrix(vocab)
    assert names == ["Action", "Adventure", "Animation", "Children's", "Comedy"]
    assert m.shape == (4, 5)
    assert m.toarray().tolist() == [
        [0, 0, 0, 0, 0],  # padding
        [1, 1, 0, 0, 0],
        [0, 0, 0, 0, 0],
        [0, 0, 1, 1, 1],
    ]
    aligned = items.aligned(vocab)
    assert aligned["title"].to_list() == [None, "GoldenEye", None, "Toy Story"]


def test_items_from_dataframe_and_rekey() -> None:
    df = pd.DataFrame({"movie": [10, 20], "name": ["A", "B"], "tags": ["x|y", ""]})
    items = items_from_dataframe(df, columns=ItemColumns(item="movie", title="name", genres="tags"))
    assert items.genres("10") == ["x", "y"] and items.genres("20") == []
    re = items.rekey({"1": "20", "2": "10", "3": "99"})
    assert re.frame["item_id"].to_list() == ["1", "2"] and re.title("1") == "B"
