"""Loading a saved model by name: the registry owns the name lookup, `dynrec.models.base` reads and
checks the files with whatever lookup it is given, and `Recommender.load` gets the registry's lookup
from the `dynrec.models` package (the base does not import the registry)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch

from dynrec.data.query import QueryBatch
from dynrec.errors import DynrecError
from dynrec.models.base import Recommender, read_model
from dynrec.models.config import RunOptions
from dynrec.models.knn import ItemKNN
from dynrec.models.registry import create_model, get_model_class, load_model
from tests.conftest import clustered_data

OPTS = RunOptions(num_threads=1, device="cpu")
HISTORIES = [[1, 2, 3], [4], [], [5, 6, 7]]


@pytest.fixture(scope="module")
def saved(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, torch.Tensor]:
    model = create_model("itemknn", config={"k": 5}).fit(clustered_data(n_users=20, n_items=12), options=OPTS)
    path = model.save(tmp_path_factory.mktemp("m") / "knn")
    return path, model.score(QueryBatch.from_histories(HISTORIES))


def test_every_way_of_loading_gives_the_same_model(saved: tuple[Path, torch.Tensor]) -> None:
    path, reference = saved
    q = QueryBatch.from_histories(HISTORIES)
    for model in (Recommender.load(path), load_model(path), read_model(path, get_model_class)):
        assert isinstance(model, ItemKNN)
        assert torch.equal(model.score(q), reference)


def test_read_model_resolves_the_name_with_the_lookup_it_is_given(saved: tuple[Path, torch.Tensor]) -> None:
    path, _ = saved
    asked: list[str] = []

    def only_knn(name: str) -> type[Recommender]:
        asked.append(name)
        if name != "itemknn":
            raise DynrecError(f"unknown model {name!r}")
        return ItemKNN

    assert isinstance(read_model(path, only_knn), ItemKNN)
    assert asked == ["itemknn"]

    def nothing(name: str) -> type[Recommender]:
        raise DynrecError(f"unknown model {name!r}")

    with pytest.raises(DynrecError, match=r"config\.json: unknown model 'itemknn'"):
        read_model(path, nothing)


def test_recommender_load_works_after_importing_only_the_base(saved: tuple[Path, torch.Tensor]) -> None:
    """A fresh process that names only `dynrec.models.base` still loads any registered kind: the
    package wires the registry in on the way (no explicit registry import needed)."""
    path, _ = saved
    code = (
        "from dynrec.models.base import Recommender\n"
        f"m = Recommender.load({str(path)!r})\n"
        "print(type(m).__name__)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "ItemKNN"
