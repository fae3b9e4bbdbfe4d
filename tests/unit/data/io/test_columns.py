"""Event files with common header names are read without a mapping (issue 25 item 2); a header the
reader cannot map is an error naming the header and the ``--columns`` spec that fixes it."""

from __future__ import annotations

import json
from pathlib import Path

import polars as pl
import pytest
from typer.testing import CliRunner

from dynrec.cli.main import app
from dynrec.data.events import EventLog
from dynrec.data.io import ColumnMap, from_dataframe, parse_columns, read_events
from dynrec.data.io.columns import auto_columns
from dynrec.errors import DataError


def rows(log: EventLog) -> list[tuple[object, ...]]:
    return list(log.frame.select("user_id", "item_id", "timestamp", "event_type", "value").iter_rows())


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        ("userId,movieId,timestamp", ColumnMap(user="userId", item="movieId", timestamp="timestamp")),
        ("user,item,time", ColumnMap(user="user", item="item", timestamp="time")),
        ("UID,IID,TS,Score", ColumnMap(user="UID", item="IID", timestamp="TS", value="Score")),
        ("user_id,productId,datetime", ColumnMap(user="user_id", item="productId", timestamp="datetime")),
        (
            "userid,asin,ts,rating,event",
            ColumnMap("userid", "asin", "ts", event_type="event", value="rating"),
        ),
        ("itemId,type,value,uid,time", ColumnMap("uid", "itemId", "time", event_type="type", value="value")),
        ("User_ID,Item_ID,TimeStamp,Event_Type", ColumnMap("User_ID", "Item_ID", "TimeStamp", "Event_Type")),
    ],
)
def test_aliases_map_each_role_case_insensitively(header: str, expected: ColumnMap) -> None:
    assert auto_columns(header.split(",")) == expected


def test_movielens_style_csv_with_iso_times_reads_without_columns(tmp_path: Path) -> None:
    p = tmp_path / "ratings.csv"
    p.write_text(
        "userId,movieId,rating,datetime\n1,31,2.5,1970-01-01T00:01:40Z\n1,1029,3.0,1970-01-01 00:03:20\n"
    )
    log = read_events(p)
    assert log.has_time
    assert rows(log) == [("1", "31", 100, "interaction", 2.5), ("1", "1029", 200, "interaction", 3.0)]


def test_aliases_in_jsonl_and_dataframes(tmp_path: Path) -> None:
    p = tmp_path / "e.jsonl"
    p.write_text(
        "\n".join(json.dumps({"uid": "a", "asin": "B1", "ts": t, "type": "view"}) for t in (5, 6)) + "\n"
    )
    assert rows(read_events(p)) == [("a", "B1", 5, "view", 1.0), ("a", "B1", 6, "view", 1.0)]
    frame = pl.DataFrame({"UserId": ["u"], "ItemId": ["i"], "Time": [7], "score": [4.0]})
    assert rows(from_dataframe(frame)) == [("u", "i", 7, "interaction", 4.0)]
    assert rows(from_dataframe(frame.to_pandas())) == [("u", "i", 7, "interaction", 4.0)]


def test_unrecognised_header_names_the_header_and_the_columns_fix(tmp_path: Path) -> None:
    p = tmp_path / "e.csv"
    p.write_text("customer,product,when\nc,p,1\n")
    with pytest.raises(DataError) as info:
        read_events(p)
    msg = str(info.value)
    assert "no user / item / time column recognised in the header ['customer', 'product', 'when']" in msg
    assert "--columns user=customer,item=product,time=when" in msg
    # the suggested spec is exactly what makes the file readable
    fixed = read_events(p, columns=parse_columns("user=customer,item=product,time=when"))
    assert rows(fixed) == [("c", "p", 1, "interaction", 1.0)]


def test_missing_time_only_keeps_the_recognised_columns_in_the_fix(tmp_path: Path) -> None:
    p = tmp_path / "e.csv"
    p.write_text("user,item\nu,i\n")
    with pytest.raises(DataError) as info:
        read_events(p)
    msg = str(info.value)
    assert "no time column recognised in the header ['user', 'item']" in msg
    assert "--columns user=user,item=item,time=TIME_COLUMN (or time= with an empty name" in msg
    order_only = read_events(p, columns=parse_columns("user=user,item=item,time="))
    assert not order_only.has_time and rows(order_only) == [("u", "i", 0, "interaction", 1.0)]


def test_two_columns_for_one_role_is_an_error_naming_both(tmp_path: Path) -> None:
    p = tmp_path / "e.csv"
    p.write_text("user_id,userId,item,timestamp\na,b,i,1\n")
    with pytest.raises(DataError, match="columns 'user_id' and 'userId' both look like the user column"):
        read_events(p)
    with pytest.raises(DataError, match="columns 'rating' and 'score' both look like the rating column"):
        auto_columns(["user", "item", "ts", "rating", "score"])
    # an explicit mapping settles it
    log = read_events(p, columns=ColumnMap(user="userId", item="item"))
    assert rows(log) == [("b", "i", 1, "interaction", 1.0)]


def test_cli_reads_aliased_headers_and_prints_the_fix(tmp_path: Path) -> None:
    runner = CliRunner()
    good = tmp_path / "good.csv"
    good.write_text("userId,movieId,timestamp\n1,10,1\n1,11,2\n2,10,3\n")
    r = runner.invoke(app, ["data", "stats", str(good), "--json"])
    assert r.exit_code == 0, r.stderr
    stats = json.loads(r.stdout)
    assert (stats["n_users"], stats["n_items"], stats["n_events"]) == (2, 2, 3)
    bad = tmp_path / "bad.csv"
    bad.write_text("a,b,c\n1,10,1\n")
    r = runner.invoke(app, ["data", "stats", str(bad)])
    assert r.exit_code == 1
    assert "--columns user=a,item=b,time=c" in r.stderr
    r = runner.invoke(app, ["data", "stats", str(bad), "--columns", "user=a,item=b,time=c", "--json"])
    assert r.exit_code == 0 and json.loads(r.stdout)["n_events"] == 1
