"""The CLI's messages name the thing that is wrong (issue 21, "Smaller"): empty API keys, a model
directory that does not exist, files that are not what an option expects, --strict item files, an
empty --history (the flagged popular fallback, as the service answers), `store seed` on any store
URL, and model files written with the mode every other file gets."""

from __future__ import annotations

import os
import stat
from collections import Counter
from pathlib import Path

import pytest
from typer.testing import CliRunner

from dynrec.cli.main import app
from dynrec.online.store.redis import RedisStore
from tests.unit.cli.test_errors import last_json
from tests.unit.jobs.test_provenance import write_events

runner = CliRunner()


def cli(*args: str, env: dict[str, str] | None = None) -> tuple[int, str, str]:
    r = runner.invoke(app, list(args), env=env)
    return r.exit_code, r.stdout, r.stderr


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("cli-edge")
    csv = write_events(root / "events.csv")
    rc, _, err = cli("train", "itemknn", "--dataset", str(csv), "--out", str(root / "m"))
    assert rc == 0, err
    return root / "m"


# ---- serve: keys and the model directory ------------------------------------------------------------------
# A model directory that does not exist makes `serve` fail before binding even when a check is
# missing, so these tests can fail but never hang on a running server.


def test_serve_refuses_an_empty_api_key(tmp_path: Path) -> None:
    missing = str(tmp_path / "no-model")
    rc, _, err = cli("serve", missing, "--api-key", "")  # before: `api_key or None` = no key
    assert rc == 1 and "--api-key is empty" in err, err
    rc, _, err = cli("serve", missing, "--api-key", "   ")
    assert rc == 1 and "--api-key is empty" in err, err
    rc, _, err = cli("serve", missing, env={"DYNREC_API_KEY": ""})  # click reads an empty one as unset
    assert rc == 1 and "DYNREC_API_KEY is empty" in err, err
    rc, _, err = cli("serve", missing, env={"DYNREC_API_KEY": " k "})
    assert rc == 1 and "DYNREC_API_KEY starts or ends with whitespace" in err, err


def test_serve_says_the_model_directory_does_not_exist(tmp_path: Path) -> None:
    rc, _, err = cli("serve", str(tmp_path / "nosuchdir"))  # before: "cannot open state store ..."
    assert rc == 1 and err.strip() == f"error: model directory {tmp_path / 'nosuchdir'} does not exist"


def test_serve_refuses_an_allowed_host_with_a_port(trained: Path) -> None:
    # --port -1 fails in serve() before binding, had the host check not stopped it first
    rc, _, err = cli("serve", str(trained), "--allowed-host", "recs.example:8000", "--port", "-1")
    assert rc == 1 and "allowed host 'recs.example:8000'" in err, err


# ---- files that are not what the option expects -------------------------------------------------------------


def test_junk_files_are_named(trained: Path, tmp_path: Path) -> None:
    junk = tmp_path / "junk.bin"
    junk.write_bytes(bytes(range(256)) * 4)
    csv = write_events(tmp_path / "events.csv")
    rc, _, err = cli(
        "train", "pop", "--dataset", str(csv), "--out", str(tmp_path / "m"), "--config", str(junk)
    )
    assert rc == 1 and str(junk) in err and "not a TOML config file" in err, err
    rc, _, err = cli("store", "export", "--store", f"sqlite:///{junk}", "--out", str(tmp_path / "x.csv"))
    assert rc == 1 and str(junk) in err and "file is not a database" in err, err
    assert "Traceback" not in err and "run with --debug" not in err


def test_train_items_strict_fails_on_an_invalid_row(tmp_path: Path) -> None:
    csv = write_events(tmp_path / "events.csv")
    items = tmp_path / "items.csv"
    items.write_text("item_id,title\ni1,One\n,Nameless\ni2,Two\n")
    args = ("train", "pop", "--dataset", str(csv), "--out", str(tmp_path / "m"), "--items", str(items))
    rc, _, err = cli(*args, "--strict")  # before: a warning, and the model was saved
    assert rc == 1 and f"{items}:line 3 field 'item_id': missing item id" in err, err
    assert not (tmp_path / "m").exists()
    rc, _, err = cli(*args)
    assert rc == 0, err


# ---- recommend with an empty history --------------------------------------------------------------------------


def test_recommend_empty_history_is_the_flagged_popular_fallback(trained: Path, tmp_path: Path) -> None:
    rc, out, err = cli("recommend", str(trained), "--history", "", "--k", "5", "--json")
    assert rc == 0, err
    got = last_json(out)
    assert got["fallback"] == "popular"  # before: 10 items of score 0, unflagged
    # the training history's item counts, ties by item index (what the service's fallback ranks by)
    from dynrec.jobs.history import training_history
    from dynrec.models.base import Recommender

    model = Recommender.load(trained)
    hist = training_history(model).data
    counts = Counter(hist.item_vocab.to_ids(hist.items))
    assert got["scores"] == sorted(counts.values(), reverse=True)[:5]
    assert [counts[i] for i in got["items"]] == got["scores"]  # type: ignore[union-attr]
    rc, out, err = cli("recommend", str(trained), "--history", "")
    assert rc == 0 and out.startswith("(empty history: the popular fallback"), out
    rc, out, err = cli("recommend", str(trained), "--history", "i1", "--json")
    assert rc == 0 and last_json(out)["fallback"] is None


# ---- store seed on any store URL ---------------------------------------------------------------------------------


def test_store_seed_takes_a_redis_url(trained: Path, redis_url: str) -> None:
    rc, out, err = cli("store", "seed", str(trained), "--store", redis_url, "--json")  # before: refused
    assert rc == 0, err
    report = last_json(out)
    assert report["events"] == 12 * 4 and report["store"] == redis_url
    store = RedisStore(redis_url)
    try:
        assert len(store.history("u0")) == 4
    finally:
        store.close()
    rc, _, err = cli("store", "seed", str(trained), "--store", redis_url)
    assert rc == 1 and "already holds events of user" in err


# ---- file modes ---------------------------------------------------------------------------------------------------


def test_model_files_get_the_mode_of_every_new_file(tmp_path: Path) -> None:
    """safetensors' writer and mkstemp create 0600 files; every file of a model directory gets
    0666 less the umask, like config.json always did."""
    csv = write_events(tmp_path / "events.csv")
    items = tmp_path / "items.csv"
    items.write_text("item_id,title,genres\n" + "".join(f"i{j},Film {j},g{j % 2}\n" for j in range(15)))
    old = os.umask(0o027)
    try:
        rc, _, err = cli(
            "train", "pop", "--dataset", str(csv), "--out", str(tmp_path / "m"), "--items", str(items)
        )
    finally:
        os.umask(old)
    assert rc == 0, err
    modes = {p.name: stat.S_IMODE(p.stat().st_mode) for p in (tmp_path / "m").iterdir()}
    assert {"model.safetensors", "item_info.json", "config.json"} <= set(modes)
    assert modes == dict.fromkeys(modes, 0o640), {k: oct(v) for k, v in modes.items()}
