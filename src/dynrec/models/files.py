"""A model directory's files: writing the learned state (`save_tensors`, with the permission bits
of every other file there), reading its JSON files and vocabularies with errors naming the file,
and checking loaded tensors against config and vocabularies (`expect`, `expect_only`,
`expect_state_dict`, used by every model's `load_tensors`). `dynrec.models.base.read_model`
reads a whole directory with these."""

from __future__ import annotations

import hashlib
import json
import os
import secrets
import stat
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file

from dynrec.data.vocab import Vocabulary
from dynrec.errors import DynrecError
from dynrec.models.config import format_number

__all__ = [
    "TensorFileError",
    "expect",
    "expect_only",
    "expect_state_dict",
    "read_json",
    "read_vocab",
    "save_tensors",
    "tensor_fingerprint",
]


def tensor_fingerprint(name: str, tensors: Mapping[str, torch.Tensor]) -> str:
    """A content fingerprint of a model's learned state (stable across processes and machines)."""
    h = hashlib.sha1(name.encode())
    for k, v in sorted(tensors.items()):
        h.update(k.encode())
        t = v.detach().cpu().contiguous()
        h.update(str(tuple(t.shape)).encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()[:16]


# ---- learned-state validation (used by every model's `load_tensors`) ------------------------------


class TensorFileError(DynrecError):
    """A model's safetensors file holds a tensor that does not fit its config and vocabulary."""


def expect(
    tensors: Mapping[str, torch.Tensor],
    name: str,
    shape: tuple[int | None, ...],
    dtype: torch.dtype,
    *,
    finite: bool = True,
    low: float | None = None,
    high: int | None = None,
    max_rows: int | None = None,
) -> torch.Tensor:
    """The tensor `name`, checked: present, `shape` (None = any size on that axis), `dtype`, all
    values finite (floats), every value ``>= low`` and (index tensors) ``< high``, and at most
    `max_rows` rows (e.g. one per item of a vocabulary that may have grown since fit).
    Raises `TensorFileError` naming the tensor (callers add the file)."""
    if name not in tensors:
        raise TensorFileError(f"tensor {name!r} is missing")
    t = tensors[name]
    if t.dtype != dtype:
        raise TensorFileError(f"tensor {name!r} has dtype {t.dtype}, expected {dtype}")
    if t.dim() != len(shape) or any(s is not None and s != n for s, n in zip(shape, t.shape, strict=True)):
        want = "[" + ", ".join("*" if s is None else str(s) for s in shape) + "]"
        raise TensorFileError(f"tensor {name!r} has shape {list(t.shape)}, expected {want}")
    if max_rows is not None and not 1 <= t.shape[0] <= max_rows:
        raise TensorFileError(f"tensor {name!r} has {t.shape[0]} rows, expected 1 to {max_rows}")
    if finite and t.is_floating_point() and t.numel() and not bool(torch.isfinite(t).all()):
        raise TensorFileError(f"tensor {name!r} has non-finite values (NaN or inf)")
    if t.numel():
        if low is not None and float(t.min()) < low:
            raise TensorFileError(
                f"tensor {name!r} has values down to {t.min().item()}, expected >= {format_number(low)}"
            )
        if high is not None and int(t.max()) >= high:
            raise TensorFileError(f"tensor {name!r} has values up to {t.max().item()}, expected < {high}")
    return t


def expect_only(tensors: Mapping[str, torch.Tensor], names: set[str] | frozenset[str]) -> None:
    """No tensors besides `names` (an unknown tensor means a different model or a damaged file)."""
    extra = sorted(set(tensors) - set(names))
    if extra:
        raise TensorFileError(f"unexpected tensor(s) {extra}")
    missing = sorted(set(names) - set(tensors))
    if missing:
        raise TensorFileError(f"tensor(s) {missing} are missing")


def expect_state_dict(net: torch.nn.Module, tensors: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """`tensors` checked against a freshly built `net`'s state_dict: the same names, shapes and
    dtypes, and finite floating-point values. Returns them in the net's key order."""
    ref = net.state_dict()
    expect_only(tensors, frozenset(ref))
    for k, v in ref.items():
        expect(tensors, k, tuple(v.shape), v.dtype)
    return {k: tensors[k] for k in ref}


def save_tensors(tensors: Mapping[str, torch.Tensor], path: str | Path) -> Path:
    """safetensors' `save_file`, then the permission bits any new file gets here (0666 less the
    umask): its writer creates files 0600, unlike every other file of a model directory."""
    p = Path(path)
    save_file(dict(tensors), str(p))
    os.chmod(p, _new_file_mode(p.parent))
    return p


def _new_file_mode(folder: Path) -> int:
    """The permission bits a file created in `folder` gets now, read from a probe file (reading
    the umask itself, `os.umask`, would change it for every thread of the process meanwhile)."""
    probe = folder / f".mode-probe.{os.getpid()}.{secrets.token_hex(4)}"
    fd = os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    try:
        return stat.S_IMODE(os.fstat(fd).st_mode)
    finally:
        os.close(fd)
        probe.unlink(missing_ok=True)


def read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise DynrecError(f"{path}: file not found") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise DynrecError(f"{path}: not valid JSON ({exc})") from None


def read_vocab(path: Path) -> Vocabulary:
    ids = read_json(path)
    if not isinstance(ids, list) or not all(isinstance(i, str) for i in ids):
        raise DynrecError(f"{path}: expected a JSON list of id strings")
    try:
        return Vocabulary.from_unique(ids)
    except ValueError as exc:
        raise DynrecError(f"{path}: {exc}") from None
