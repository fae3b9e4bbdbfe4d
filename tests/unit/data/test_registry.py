"""Datasets by name: resolution order, offline errors, and downloads from a local HTTP server."""

from __future__ import annotations

import hashlib
import http.server
import io
import threading
import zipfile
from collections.abc import Iterator
from dataclasses import replace
from functools import partial
from pathlib import Path

import pytest

from dynrec.data import registry
from dynrec.data.download import ChecksumError, Download, DownloadError
from dynrec.data.registry import fetch, load, load_items, resolve
from dynrec.errors import DataError, DatasetNotFoundError

REAL_CHECKOUT_DATA_DIR = registry.checkout_data_dir  # before the fixture replaces it
U_DATA = "1\t10\t5\t100\n1\t20\t3\t101\n2\t10\t4\t102\n"
U_ITEM = "10|Ten (1995)|01-Jan-1995||u|" + "|".join(["0"] * 18 + ["1"]) + "\n"


@pytest.fixture(autouse=True)
def isolated_dirs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """No real data, cache or network: every test starts with empty search dirs (the checkout's
    shared/data is tmp_path/shared, absent until a test makes it)."""
    monkeypatch.setenv("DYNREC_DATA_DIR", str(tmp_path / "env"))
    monkeypatch.setenv("DYNREC_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("DYNREC_OFFLINE", "1")
    shared = tmp_path / "shared"
    monkeypatch.setattr(registry, "checkout_data_dir", lambda: shared if shared.is_dir() else None)
    return tmp_path


def make_zip(members: dict[str, str]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for name, text in members.items():
            zf.writestr(name, text)
    return buf.getvalue()


@pytest.fixture
def server(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    """A local HTTP server over a folder: (base URL, folder)."""
    root = tmp_path / "www"
    root.mkdir()

    class Quiet(http.server.SimpleHTTPRequestHandler):
        def log_message(self, format: str, *args: object) -> None:
            pass

    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), partial(Quiet, directory=str(root)))
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}/", root
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join(5)


def serve_ml100k(
    monkeypatch: pytest.MonkeyPatch,
    base: str,
    root: Path,
    *,
    sha256: str | None = None,
    md5: str | None = None,
) -> bytes:
    archive = make_zip({"ml-100k/u.data": U_DATA, "ml-100k/u.item": U_ITEM, "ml-100k/README": "tiny"})
    (root / "ml-100k.zip").write_bytes(archive)
    dl = Download(
        base + "ml-100k.zip",
        "ml-100k",
        md5=md5 or hashlib.md5(archive).hexdigest(),
        sha256=sha256 or hashlib.sha256(archive).hexdigest(),
    )
    monkeypatch.setitem(registry.DATASETS, "ml-100k", replace(registry.DATASETS["ml-100k"], download=dl))
    return archive


def leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.startswith("."))


# ---------------------------------------------------------------- resolution


def test_resolution_order_explicit_then_env_then_cache(isolated_dirs: Path) -> None:
    for d in ("explicit", "env", "cache"):
        (isolated_dirs / d / "ml-100k").mkdir(parents=True)
        (isolated_dirs / d / "ml-100k" / "u.data").write_text(U_DATA)
    assert resolve("ml-100k", isolated_dirs / "explicit")[1] == isolated_dirs / "explicit/ml-100k/u.data"
    assert resolve("ml-100k")[1] == isolated_dirs / "env/ml-100k/u.data"
    (isolated_dirs / "env/ml-100k/u.data").unlink()
    assert resolve("ml-100k")[1] == isolated_dirs / "cache/ml-100k/u.data"


def test_shared_data_next_to_the_checkout_comes_after_the_env_and_before_the_cache(
    isolated_dirs: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for d in ("shared", "cache"):
        (isolated_dirs / d / "ml-100k").mkdir(parents=True)
        (isolated_dirs / d / "ml-100k" / "u.data").write_text(U_DATA)
    assert [label for label, _ in registry.search_places("x")] == [
        "--data-dir",
        "DYNREC_DATA_DIR",
        "shared/data next to the checkout",
        "cache",
    ]
    assert resolve("ml-100k")[1] == isolated_dirs / "shared/ml-100k/u.data"
    monkeypatch.delenv("DYNREC_DATA_DIR")  # outside make: found in the same place
    assert resolve("ml-100k")[1] == isolated_dirs / "shared/ml-100k/u.data"
    monkeypatch.setenv("DYNREC_DATA_DIR", str(isolated_dirs / "shared"))  # inside make: searched once
    assert registry.search_dirs() == [isolated_dirs / "shared", isolated_dirs / "cache"]


def test_the_checkout_dir_is_shared_data_next_to_this_repository() -> None:
    repo = Path(__file__).resolve().parents[3]
    shared = repo.parent / "shared" / "data"
    from_checkout = Path(registry.__file__).resolve().parents[3] == repo  # else an installed package
    assert REAL_CHECKOUT_DATA_DIR() == (shared if from_checkout and shared.is_dir() else None)


def test_file_directly_in_data_dir_and_second_candidate(isolated_dirs: Path) -> None:
    d = isolated_dirs / "flat"
    d.mkdir()
    (d / "ml-100k.inter").write_text("user_id:token\titem_id:token\ttimestamp:float\n1\t2\t3\n")
    spec, path = resolve("ml-100k", d)
    assert path == d / "ml-100k.inter"
    log = load("ml-100k", d)
    assert log.frame.select("user_id", "item_id", "timestamp").rows() == [("1", "2", 3)]


def test_load_by_path_and_unknown_names(isolated_dirs: Path) -> None:
    p = isolated_dirs / "mine.csv"
    p.write_text("user_id,item_id,timestamp\na,b,1\n")
    assert len(load(str(p))) == 1
    with pytest.raises(DatasetNotFoundError, match="unknown dataset 'ml-10m'"):
        load("ml-10m")
    with pytest.raises(DataError, match="no such file"):
        load(str(isolated_dirs / "missing.csv"))


def test_offline_not_found_says_how_to_point_at_a_copy(isolated_dirs: Path) -> None:
    (isolated_dirs / "shared").mkdir()
    with pytest.raises(DatasetNotFoundError) as err:
        load("ml-100k", isolated_dirs / "explicit")
    msg = str(err.value)
    assert "DYNREC_DATA_DIR" in msg and "--data-dir" in msg and "file path" in msg
    assert "ml-100k/u.data" in msg and "offline" in msg
    looked = (
        f"looked for u.data or ml-100k.inter in --data-dir {isolated_dirs}/explicit/ml-100k (and "
        f"{isolated_dirs}/explicit); DYNREC_DATA_DIR {isolated_dirs}/env/ml-100k (and {isolated_dirs}/env); "
        f"shared/data next to the checkout {isolated_dirs}/shared/ml-100k (and {isolated_dirs}/shared); "
        f"cache {isolated_dirs}/cache/ml-100k (and {isolated_dirs}/cache)."
    )
    assert looked in msg
    assert "publisher serves it (https://files.grouplens.org/datasets/movielens/ml-100k.zip)" in msg
    assert "without it dynrec downloads it into the cache" in msg


def test_ml_1m_is_offline_only_and_explains_why(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("DYNREC_OFFLINE")
    with pytest.raises(DatasetNotFoundError) as err:
        load("ml-1m")
    msg = str(err.value)
    assert "SASRec" in msg and "ml-1m-full" in msg and "DYNREC_DATA_DIR" in msg
    with pytest.raises(DownloadError, match="no download"):
        fetch("ml-1m")


def test_known_checksums_are_real_digests() -> None:
    for name in ("ml-100k", "ml-1m-full"):
        dl = registry.DATASETS[name].download
        assert dl is not None and dl.url.startswith("https://files.grouplens.org/datasets/movielens/")
        assert dl.md5 is not None and len(dl.md5) == 32 and int(dl.md5, 16) >= 0
    assert registry.DATASETS["ml-1m-full"].download.url.endswith("/ml-1m.zip")  # type: ignore[union-attr]
    with pytest.raises(ValueError, match="checksum"):
        Download("http://x/y.zip", "y")


# ---------------------------------------------------------------- downloads (local server)


def test_download_verifies_extracts_and_loads(
    server: tuple[str, Path], monkeypatch: pytest.MonkeyPatch, isolated_dirs: Path
) -> None:
    base, root = server
    serve_ml100k(monkeypatch, base, root)
    monkeypatch.delenv("DYNREC_OFFLINE")
    log = load("ml-100k")
    cache = isolated_dirs / "cache"
    assert log.source == str(cache / "ml-100k" / "u.data")
    assert log.frame.select("user_id", "item_id", "value").rows() == [
        ("1", "10", 5.0),
        ("1", "20", 3.0),
        ("2", "10", 4.0),
    ]
    assert sorted(p.name for p in (cache / "ml-100k").iterdir()) == ["README", "u.data", "u.item"]
    assert leftovers(cache) == []  # no .part file, no staging folder
    assert load_items("ml-100k").genres("10") == ["Western"]
    (root / "ml-100k.zip").unlink()  # second load: from the cache, no network
    assert len(load("ml-100k")) == 3


def test_checksum_mismatch_extracts_nothing(
    server: tuple[str, Path], monkeypatch: pytest.MonkeyPatch, isolated_dirs: Path
) -> None:
    base, root = server
    serve_ml100k(monkeypatch, base, root, sha256="0" * 64)
    with pytest.raises(ChecksumError) as err:
        fetch("ml-100k")
    assert "sha256 checksum mismatch: expected " + "0" * 64 in str(err.value)
    assert base + "ml-100k.zip" in str(err.value)
    cache = isolated_dirs / "cache"
    assert not (cache / "ml-100k").exists() and leftovers(cache) == []
    monkeypatch.delenv("DYNREC_OFFLINE")
    with pytest.raises(ChecksumError):
        load("ml-100k")  # a corrupt download is an error, not "not found"
    serve_ml100k(monkeypatch, base, root, md5="f" * 32)  # right sha256, wrong md5: both are checked
    with pytest.raises(ChecksumError, match="md5 checksum mismatch"):
        fetch("ml-100k")


def test_http_error_becomes_not_found_with_hint(
    server: tuple[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    base, root = server
    serve_ml100k(monkeypatch, base, root)
    (root / "ml-100k.zip").unlink()
    monkeypatch.delenv("DYNREC_OFFLINE")
    with pytest.raises(DatasetNotFoundError) as err:
        load("ml-100k")
    assert "HTTP 404" in str(err.value) and "DYNREC_DATA_DIR" in str(err.value)
    with pytest.raises(DatasetNotFoundError, match="offline mode"):
        load("ml-100k", download=False)


def test_unreachable_host_is_a_download_error(monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(DownloadError):
        fetch("ml-100k", url="http://127.0.0.1:9/ml-100k.zip", timeout=5)


def test_unsafe_and_corrupt_archives_are_rejected(
    server: tuple[str, Path], monkeypatch: pytest.MonkeyPatch, isolated_dirs: Path
) -> None:
    base, root = server
    for name, payload in (
        ("evil.zip", make_zip({"ml-100k/u.data": U_DATA, "../escape.txt": "x"})),
        ("corrupt.zip", b"PK\x03\x04 not really a zip"),
        ("empty.zip", make_zip({"ml-100k/README": "no data"})),
    ):
        (root / name).write_bytes(payload)
        dl = Download(base + name, "ml-100k", sha256=hashlib.sha256(payload).hexdigest())
        monkeypatch.setitem(registry.DATASETS, "ml-100k", replace(registry.DATASETS["ml-100k"], download=dl))
        with pytest.raises(DownloadError):
            fetch("ml-100k")
    assert (
        not (isolated_dirs / "escape.txt").exists() and not (isolated_dirs / "cache" / "escape.txt").exists()
    )
    assert not (isolated_dirs / "cache" / "ml-100k" / "u.data").exists()
    assert leftovers(isolated_dirs / "cache") == []


def test_ml_1m_items_rekeyed_to_sasrec_ids(isolated_dirs: Path) -> None:
    d = isolated_dirs / "env" / "ml-1m"
    d.mkdir(parents=True)
    (d / "movies.dat").write_bytes(
        b"1::Toy Story (1995)::Animation\n2::Jumanji (1995)::Adventure\n5::X::Drama\n"
    )
    (d / "sas_to_original_items.txt").write_text("1 2\n2 1\n")
    items = load_items("ml-1m")
    assert items.frame.select("item_id", "title").rows() == [
        ("1", "Jumanji (1995)"),
        ("2", "Toy Story (1995)"),
    ]
    assert load_items("ml-1m-full").title("5") == "X"
    with pytest.raises(DatasetNotFoundError, match="no item metadata"):
        load_items("yelp")


def test_cli_finds_data_outside_make_and_says_where_it_looked(
    isolated_dirs: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from typer.testing import CliRunner

    from dynrec.cli.main import app

    runner = CliRunner()
    monkeypatch.delenv("DYNREC_DATA_DIR")
    (isolated_dirs / "shared").mkdir()
    r = runner.invoke(app, ["data", "stats", "ml-100k", "--json"])
    assert r.exit_code == 1
    assert (
        f"looked for u.data or ml-100k.inter in shared/data next to the checkout {isolated_dirs}/shared/ml-100k"
        in r.stderr
    )
    assert "DYNREC_DATA_DIR is not set" in r.stderr
    (isolated_dirs / "shared" / "ml-100k").mkdir()
    (isolated_dirs / "shared" / "ml-100k" / "u.data").write_text(U_DATA)
    r = runner.invoke(app, ["data", "stats", "ml-100k", "--json"])
    assert r.exit_code == 0, r.stderr
    assert '"n_events": 3' in r.stdout
