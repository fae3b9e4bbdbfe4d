"""Fuzz the files of saved model directories: every corruption either makes `Recommender.load` raise
`DynrecError` naming the file, or loads a model that scores exactly as the original — never a crash,
a traceback or silently wrong scores. Index corruptions (which used to reach scipy's unchecked
sparse products and segfault) are loaded and scored in a subprocess, so a crash fails the test
instead of killing pytest."""

from __future__ import annotations

import json
import shutil
import struct
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from safetensors.torch import load_file, save_file

from dynrec.data.query import QueryBatch
from dynrec.errors import DynrecError
from dynrec.models.base import Recommender
from dynrec.models.config import RunOptions
from dynrec.models.registry import create_model
from tests.conftest import clustered_data

OPTS = RunOptions(num_threads=1, device="cpu")
MODELS = {
    "pop": {},
    "itemknn": {"k": 5},
    "als": {"embedding_dim": 4, "epochs": 2},
    "gru4rec": {"embedding_dim": 8, "hidden_dim": 8, "batch_size": 16, "epochs": 1, "max_len": 6},
}
HISTORIES = [[1, 2, 3], [4], [], [5, 6, 7, 8, 9], [12, 1]]
Corruption = Callable[[Path], None]


@pytest.fixture(scope="module")
def saved(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[Path, torch.Tensor]]:
    """Each model fitted on tiny data and saved, with its scores for `HISTORIES`."""
    data = clustered_data(n_users=30, n_items=16, per_user=8)
    root = tmp_path_factory.mktemp("models")
    out = {}
    q = QueryBatch.from_histories(HISTORIES)
    for name, cfg in MODELS.items():
        model = create_model(name, config=cfg).fit(data, options=OPTS)
        model.save(root / name)
        out[name] = (root / name, model.score(q))
    return out


def outcome(path: Path, reference: torch.Tensor) -> str:
    """ "refused: <message>" or "equal" (anything else — another exception, different scores — fails)."""
    try:
        model = Recommender.load(path, options=OPTS)
    except DynrecError as exc:
        return f"refused: {exc}"
    scores = model.score(QueryBatch.from_histories(HISTORIES))
    return "equal" if torch.equal(scores, reference) else "different scores"


# ---- corruptions --------------------------------------------------------------------------------------


def rewrite_tensors(fn: Callable[[dict[str, torch.Tensor]], None]) -> Corruption:
    def apply(d: Path) -> None:
        t = dict(load_file(str(d / "model.safetensors")))
        fn(t)
        save_file(t, str(d / "model.safetensors"))

    return apply


def set_tensor(name: str, make: Callable[[torch.Tensor], torch.Tensor]) -> Corruption:
    def fn(t: dict[str, torch.Tensor]) -> None:
        t[name] = make(t[name]).contiguous()

    return rewrite_tensors(fn)


def write(name: str, text: str | bytes) -> Corruption:
    def apply(d: Path) -> None:
        p = d / name
        p.write_bytes(text if isinstance(text, bytes) else text.encode())

    return apply


def edit_json(name: str, fn: Callable[[object], object]) -> Corruption:
    def apply(d: Path) -> None:
        p = d / name
        p.write_text(json.dumps(fn(json.loads(p.read_text()))))

    return apply


def truncate(name: str, keep: float) -> Corruption:
    def apply(d: Path) -> None:
        b = (d / name).read_bytes()
        (d / name).write_bytes(b[: int(len(b) * keep)])

    return apply


def delete(name: str) -> Corruption:
    return lambda d: (d / name).unlink()


def _cfg(fn: Callable[[dict[str, object]], None]) -> Callable[[object], object]:
    def g(spec: object) -> object:
        assert isinstance(spec, dict)
        fn(spec)
        return spec

    return g


def file_cases(tensor_names: list[str]) -> dict[str, Corruption]:
    rng = np.random.default_rng(0)
    cases: dict[str, Corruption] = {
        "weights-empty": write("model.safetensors", b""),
        "weights-random": write("model.safetensors", rng.integers(0, 256, 4096, dtype=np.uint8).tobytes()),
        "weights-huge-header": write("model.safetensors", struct.pack("<Q", 1 << 40) + b"{}"),
        "weights-missing": delete("model.safetensors"),
        "config-list": write("config.json", "[1, 2, 3]"),
        "config-cut": truncate("config.json", 0.5),
        "config-not-utf8": write("config.json", b"\xff\xfe{"),
        "config-no-model": edit_json("config.json", _cfg(lambda s: s.pop("model"))),
        "config-unknown-model": edit_json("config.json", _cfg(lambda s: s.update(model="nope"))),
        "config-config-list": edit_json("config.json", _cfg(lambda s: s.update(config=[1]))),
        "config-unknown-option": edit_json("config.json", _cfg(lambda s: s["config"].update(bogus=1))),  # type: ignore[attr-defined]
        "config-bad-seed": edit_json("config.json", _cfg(lambda s: s["config"].update(seed="x"))),  # type: ignore[attr-defined]
        "config-meta-list": edit_json("config.json", _cfg(lambda s: s.update(meta=[]))),
        "config-reindented": edit_json("config.json", lambda s: s),  # harmless: loads, same scores
        "items-cut": truncate("items.json", 0.5),
        "items-object": write("items.json", '{"a": 1}'),
        "items-numbers": write("items.json", "[1, 2, 3]"),
        "items-duplicates": edit_json("items.json", lambda ids: [*ids, ids[0]]),  # type: ignore[index]
        "items-fewer": edit_json("items.json", lambda ids: ids[:-3]),  # type: ignore[index]
        "items-missing": delete("items.json"),
        "users-garbage": write("users.json", "nonsense"),
        "tensor-extra": rewrite_tensors(lambda t: t.update(extra=torch.zeros(3))),
    }
    for i, keep in enumerate((0.0, 0.05, 0.5, 0.99)):
        cases[f"weights-truncated-{i}"] = truncate("model.safetensors", keep)
    for name in tensor_names:
        cases[f"{name}-deleted"] = rewrite_tensors(lambda t, n=name: t.pop(n))  # type: ignore[misc]
        cases[f"{name}-float64"] = set_tensor(name, lambda x: x.to(torch.float64))
        cases[f"{name}-int32"] = set_tensor(name, lambda x: x.to(torch.int32))
        cases[f"{name}-shorter"] = set_tensor(
            name, lambda x: x.reshape(-1)[:-1] if x.numel() > 1 else x[None]
        )
        cases[f"{name}-extra-dim"] = set_tensor(name, lambda x: x[None])
        cases[f"{name}-nan"] = set_tensor(
            name,
            lambda x: (
                torch.where(torch.arange(x.numel()).reshape(x.shape) == 1, torch.nan, x)
                if x.is_floating_point()
                else x.float() * torch.nan
            ),
        )
        cases[f"{name}-inf"] = set_tensor(
            name, lambda x: x.float().fill_(torch.inf) if x.numel() else x.float()
        )
    return cases


def index_cases(saved_dir: Path) -> dict[str, Corruption]:
    """Integer tensors: indices and sizes scaled, negated, shifted past the catalogue."""
    t = load_file(str(saved_dir / "model.safetensors"))
    cases: dict[str, Corruption] = {}
    for name, x in t.items():
        if x.is_floating_point():
            continue
        cases[f"{name}-x1000"] = set_tensor(name, lambda v: v * 1000)
        cases[f"{name}-negated"] = set_tensor(name, lambda v: -v)
        cases[f"{name}-plus-100"] = set_tensor(name, lambda v: v + 100)
        cases[f"{name}-reversed"] = set_tensor(name, lambda v: v.flip(0))
    return cases


def materialise(src: Path, dst: Path, corrupt: Corruption) -> Path:
    shutil.copytree(src, dst)
    corrupt(dst)
    return dst


# ---- the tests ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", list(MODELS))
def test_file_corruptions_refused_or_harmless(
    name: str, saved: dict[str, tuple[Path, torch.Tensor]], tmp_path: Path
) -> None:
    src, ref = saved[name]
    names = [k for k, v in load_file(str(src / "model.safetensors")).items() if v.is_floating_point()]
    results = {}
    for case, corrupt in file_cases(names).items():
        results[case] = outcome(materialise(src, tmp_path / case, corrupt), ref)
    bad = {c: r for c, r in results.items() if not (r == "equal" or r.startswith("refused: "))}
    assert not bad, bad
    assert results["config-reindented"] == "equal"
    assert sum(r == "equal" for r in results.values()) == 1, {
        c: r for c, r in results.items() if r == "equal"
    }
    # the refusal names the file at fault
    assert results["config-list"].startswith(f"refused: {tmp_path / 'config-list' / 'config.json'}:")
    assert results["items-cut"].startswith(f"refused: {tmp_path / 'items-cut' / 'items.json'}:")
    assert results["weights-random"].startswith(
        f"refused: {tmp_path / 'weights-random' / 'model.safetensors'}:"
    )
    assert "'extra'" in results["tensor-extra"]


def test_index_corruptions_never_crash(saved: dict[str, tuple[Path, torch.Tensor]], tmp_path: Path) -> None:
    """All integer-tensor corruptions of every model, loaded and scored in one subprocess."""
    dirs: dict[str, str] = {}
    refs: dict[str, str] = {}
    for name, (src, ref) in saved.items():
        torch.save(ref, tmp_path / f"{name}.ref.pt")
        for case, corrupt in index_cases(src).items():
            d = materialise(src, tmp_path / f"{name}-{case}", corrupt)
            dirs[f"{name}/{case}"] = str(d)
            refs[f"{name}/{case}"] = str(tmp_path / f"{name}.ref.pt")
    assert any(k.startswith("itemknn/sim.indices") for k in dirs) and len(dirs) >= 12
    script = (
        "import json, sys, torch\n"
        "from tests.unit.models.test_files import outcome\n"
        "from pathlib import Path\n"
        "cases = json.loads(sys.argv[1]); refs = json.loads(sys.argv[2])\n"
        "print(json.dumps({k: outcome(Path(d), torch.load(refs[k])) for k, d in cases.items()}))\n"
    )
    root = Path(__file__).resolve().parents[3]
    proc = subprocess.run(
        [sys.executable, "-c", script, json.dumps(dirs), json.dumps(refs)],
        capture_output=True,
        text=True,
        cwd=root,
        timeout=120,
    )
    assert proc.returncode == 0, f"exit {proc.returncode}: {proc.stderr[-2000:]}"
    results = json.loads(proc.stdout.strip().splitlines()[-1])
    bad = {c: r for c, r in results.items() if not (r == "equal" or r.startswith("refused: "))}
    assert not bad, bad
    # the reported refusal, exactly
    knn = saved["itemknn"][0]
    n = len(json.loads((knn / "items.json").read_text())) + 1
    top = int(load_file(str(knn / "model.safetensors"))["sim.indices"].max()) * 1000
    d = dirs["itemknn/sim.indices-x1000"]
    assert results["itemknn/sim.indices-x1000"] == (
        f"refused: {d}/model.safetensors: tensor 'sim.indices' has values up to {top}, expected < {n}"
    )


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_header_byte_flips(
    data: st.DataObject, saved: dict[str, tuple[Path, torch.Tensor]], tmp_path: Path
) -> None:
    """Any byte of a safetensors header (names, dtypes, shapes, offsets) changed: refused or harmless."""
    name = data.draw(st.sampled_from(["pop", "itemknn"]))
    src, ref = saved[name]
    raw = bytearray((src / "model.safetensors").read_bytes())
    header_len = struct.unpack("<Q", bytes(raw[:8]))[0]
    pos = data.draw(st.integers(0, 8 + header_len - 1))
    raw[pos] = data.draw(st.integers(0, 255).filter(lambda b: b != raw[pos]))
    d = tmp_path / f"flip-{name}-{pos}-{raw[pos]}"
    if d.exists():
        shutil.rmtree(d)
    shutil.copytree(src, d)
    (d / "model.safetensors").write_bytes(bytes(raw))
    r = outcome(d, ref)
    assert r == "equal" or r.startswith("refused: "), r
