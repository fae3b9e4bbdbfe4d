"""Property tests of the CSV reader: anything the `csv` module writes reads back exactly, and no input
(broken quoting, bad bytes, truncated gzip) raises anything but `DataError` or corrupts a good row."""

from __future__ import annotations

import csv
import gzip
import io
from pathlib import Path
from tempfile import TemporaryDirectory

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dynrec.data.io import read_events
from dynrec.errors import DataError

PROPS = settings(
    max_examples=120,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.too_slow],
)

# ids: letters/digits/punctuation/unicode plus the characters CSV has to quote; no control
# characters but newline, and no surrounding whitespace (the reader refuses such ids: the id rule
# of dynrec.data.ids); item ids also hold no comma, newline or carriage return (the id rule)
_chars = st.characters(blacklist_categories=("Cs", "Cc", "Zl", "Zp"), max_codepoint=0x2FFF)
ids = st.text(
    st.one_of(_chars, st.sampled_from([",", '"', "\n", " ", "\r", ";"])), min_size=1, max_size=8
).filter(lambda s: s.strip() == s and s != "")
item_ids = st.text(st.one_of(_chars, st.sampled_from(['"', " ", ";"])), min_size=1, max_size=8).filter(
    lambda s: s.strip() == s and s != "" and "," not in s
)
rows_st = st.lists(st.tuples(ids, item_ids, st.integers(0, 2**62)), min_size=1, max_size=25)
quoting = st.sampled_from([csv.QUOTE_MINIMAL, csv.QUOTE_ALL, csv.QUOTE_NONNUMERIC])
terminator = st.sampled_from(["\n", "\r\n"])

HEADER = ("user_id", "item_id", "timestamp")


def records(rows: list[tuple[str, str, int]], quote: int, eol: str) -> list[str]:
    """Each row serialised by the `csv` module (the header first)."""
    out = []
    for r in [HEADER, *rows]:
        buf = io.StringIO()
        csv.writer(buf, quoting=quote, lineterminator=eol).writerow(r)
        out.append(buf.getvalue())
    return out


def start_lines(recs: list[bytes]) -> list[int]:
    """1-based line on which each record starts."""
    starts, line = [], 1
    for r in recs:
        starts.append(line)
        line += r.count(b"\n")
    return starts


def read(data: bytes, name: str = "e.csv") -> list[tuple[int, str, str, int]] | None:
    """(line, user, item, timestamp) of the accepted rows, or None on `DataError`."""
    with TemporaryDirectory() as d:
        p = Path(d) / name
        p.write_bytes(data)
        try:
            log = read_events(p, duplicates="keep")
        except DataError:
            return None
    return log.frame.select("line", "user_id", "item_id", "timestamp").rows()


@PROPS
@given(rows_st, quoting, terminator)
def test_written_rows_read_back_exactly(rows: list[tuple[str, str, int]], quote: int, eol: str) -> None:
    recs = [r.encode() for r in records(rows, quote, eol)]
    got = read(b"".join(recs))
    lines = start_lines(recs)[1:]
    assert got == [(ln, u, i, t) for ln, (u, i, t) in zip(lines, rows, strict=True)]


garbage = st.one_of(
    st.binary(max_size=20).map(lambda b: b.replace(b"\n", b"")),  # any bytes, invalid UTF-8 included
    st.sampled_from([b'u,"i,1', b'"', b'a,"b"c,1', b"caf\xe9,x,1", b'""",,', b"\xff\xfe", b",,"]),
)


@PROPS
@given(rows_st, quoting, terminator, st.data())
def test_broken_lines_never_corrupt_the_good_rows(
    rows: list[tuple[str, str, int]], quote: int, eol: str, data: st.DataObject
) -> None:
    recs = [r.encode() for r in records(rows, quote, eol)]
    k = data.draw(st.integers(1, len(recs) - 1), label="broken record")
    recs[k] = data.draw(garbage, label="garbage") + eol.encode()
    got = read(b"".join(recs))
    if got is None:
        return  # a clear DataError (e.g. nothing valid left) is an acceptable answer
    starts = start_lines(recs)
    expected = {starts[j]: (starts[j], *rows[j - 1]) for j in range(1, len(recs)) if j != k}
    for row in got:
        if row[0] in expected:
            assert row == expected[row[0]]


plain_ids = st.text("abcxyz0123456789", min_size=1, max_size=6)


@PROPS
@given(st.lists(st.tuples(plain_ids, plain_ids, st.integers(0, 10**9)), min_size=2, max_size=30), st.data())
def test_a_stray_quote_costs_exactly_its_own_row(
    rows: list[tuple[str, str, int]], data: st.DataObject
) -> None:
    recs = [r.encode() for r in records(rows, csv.QUOTE_MINIMAL, "\n")]
    k = data.draw(st.integers(1, len(recs) - 1))
    u, i, t = rows[k - 1]
    recs[k] = f'{u},"{i},{t}\n'.encode()
    got = read(b"".join(recs))
    expected = [(j + 1, *rows[j - 1]) for j in range(1, len(recs)) if j != k]
    if not expected:
        assert got is None
    else:
        assert got == expected


@PROPS
@given(rows_st, st.data())
def test_truncated_gzip_is_a_data_error(rows: list[tuple[str, str, int]], data: st.DataObject) -> None:
    blob = gzip.compress("".join(records(rows, csv.QUOTE_MINIMAL, "\n")).encode())
    cut = data.draw(st.integers(0, len(blob) - 1))
    assert read(blob[:cut], "e.csv.gz") is None


@PROPS
@given(st.binary(max_size=200), st.sampled_from(["e.csv", "e.tsv", "e.jsonl", "s.txt", "u.data", "r.dat"]))
def test_arbitrary_bytes_give_events_or_a_data_error(blob: bytes, name: str) -> None:
    read(b"user_id,item_id,timestamp\n" + blob if name.endswith("csv") else blob, name)


def _encodable(enc: str) -> st.SearchStrategy[list[tuple[str, str, int]]]:
    def ok(s: str) -> bool:
        try:
            s.encode(enc)
        except UnicodeEncodeError:
            return False
        return True

    return st.lists(
        st.tuples(ids.filter(ok), item_ids.filter(ok), st.integers(0, 10**12)), min_size=1, max_size=15
    )


@PROPS
@given(
    st.sampled_from(["latin-1", "cp1252", "utf-16"]).flatmap(lambda e: st.tuples(st.just(e), _encodable(e)))
)
def test_other_encodings_round_trip_or_are_reported(case: tuple[str, list[tuple[str, str, int]]]) -> None:
    enc, rows = case
    text = "".join(records(rows, csv.QUOTE_MINIMAL, "\n"))
    recs = [r.encode("utf-8") for r in records(rows, csv.QUOTE_MINIMAL, "\n")]
    expected = [(ln, *r) for ln, r in zip(start_lines(recs)[1:], rows, strict=True)]
    with TemporaryDirectory() as d:
        p = Path(d) / "e.csv"
        p.write_bytes(text.encode(enc))
        got = read_events(p, encoding=enc, duplicates="keep")
        assert got.frame.select("line", "user_id", "item_id", "timestamp").rows() == expected
        # read as UTF-8: a DataError, or rows on the lines written (rows with non-UTF-8 bytes are
        # reported; bytes that happen to be valid UTF-8 are mojibake no reader can detect)
        try:
            as_utf8 = read_events(p, duplicates="keep").frame.select(
                "line", "user_id", "item_id", "timestamp"
            )
        except DataError:
            return
    assert set(as_utf8["line"].to_list()) <= {ln for ln, *_ in expected}
