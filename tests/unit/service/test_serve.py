"""`dynrec.service.serve`: the access log is off unless asked for (``dynrec serve --access-log``),
in the one-process and the multi-process mode."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

import dynrec.service.serve as serve_mod
from dynrec.cli.main import app as cli_app
from dynrec.service import ServiceSettings
from tests.conftest import clustered_data
from tests.serve_process import itemknn_dir


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    data = clustered_data(n_users=12, n_items=10, n_groups=2, per_user=5, seed=3)
    return itemknn_dir(tmp_path_factory.mktemp("serve-options"), data)


@pytest.fixture
def served(monkeypatch: pytest.MonkeyPatch) -> list[dict[str, Any]]:
    """What each `uvicorn.run` call was given (nothing is served)."""
    calls: list[dict[str, Any]] = []
    monkeypatch.setattr(serve_mod.uvicorn, "run", lambda app, **kw: calls.append({"app": app, **kw}))
    monkeypatch.setattr(serve_mod.os, "environ", dict(os.environ))  # the workers' settings go here
    return calls


@pytest.mark.parametrize("workers", [1, 2])
def test_access_log_is_off_unless_asked_for(
    model_dir: Path, tmp_path: Path, served: list[dict[str, Any]], workers: int
) -> None:
    settings = ServiceSettings(model_dir=str(model_dir), store_url=f"sqlite:///{tmp_path / 's.db'}")
    serve_mod.serve(settings, port=0, workers=workers)
    serve_mod.serve(settings, port=0, workers=workers, access_log=True)
    assert [c["access_log"] for c in served] == [False, True]
    assert all(c["http"] is serve_mod.NoDelayHTTPProtocol for c in served)


def test_the_cli_option_reaches_serve(model_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    got: list[bool] = []
    monkeypatch.setattr(serve_mod, "serve", lambda settings, **kw: got.append(kw["access_log"]))
    runner = CliRunner()
    assert runner.invoke(cli_app, ["serve", str(model_dir)]).exit_code == 0
    assert runner.invoke(cli_app, ["serve", str(model_dir), "--access-log"]).exit_code == 0
    assert got == [False, True]
