"""Downloading a dataset archive from its publisher: streamed to a temporary file, its checksum
checked, extracted into a staging folder next to the target and moved into place file by file with
`os.replace` (the data file last), so an interrupted download never leaves a half-written dataset.
Which datasets have a download, and where they go, is `dynrec.data.registry`'s."""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import sys
import tempfile
import urllib.error
import urllib.request
import zipfile
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

from dynrec.errors import DataError, DatasetNotFoundError

__all__ = ["ChecksumError", "Download", "DownloadError", "download_archive"]

log = logging.getLogger(__name__)


class ChecksumError(DataError):
    """A downloaded archive does not match its published checksum (nothing was extracted)."""


class DownloadError(DatasetNotFoundError):
    """A dataset could not be downloaded (offline, HTTP error, bad archive)."""


@dataclass(frozen=True)
class Download:
    """Where the publisher serves a dataset, and the digest(s) the archive must match."""

    url: str
    archive_root: str  # the top folder inside the zip, stripped on extraction
    md5: str | None = None
    sha256: str | None = None

    def __post_init__(self) -> None:
        if not (self.md5 or self.sha256):
            raise ValueError(f"download {self.url} needs a checksum (md5 or sha256)")


def _stream(url: str, dest: Path, timeout: float) -> tuple[str, str, int]:
    """Stream `url` into `dest`; return (md5, sha256, size)."""
    md5, sha = hashlib.md5(usedforsecurity=False), hashlib.sha256()
    size = 0
    req = urllib.request.Request(url, headers={"User-Agent": "dynrec"})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp, dest.open("wb") as fh:
            total = int(resp.headers.get("Content-Length") or 0)
            bar = _progress(total, url)
            while chunk := resp.read(1 << 20):
                fh.write(chunk)
                md5.update(chunk)
                sha.update(chunk)
                size += len(chunk)
                if bar is not None:
                    bar.update(len(chunk))
            if bar is not None:
                bar.close()
    except urllib.error.HTTPError as exc:
        raise DownloadError(f"{url}: HTTP {exc.code} {exc.reason}") from exc
    except urllib.error.URLError as exc:
        raise DownloadError(f"{url}: {exc.reason}") from exc
    except (TimeoutError, OSError) as exc:
        raise DownloadError(f"{url}: {exc}") from exc
    if total and size != total:
        raise DownloadError(f"{url}: connection closed after {size} of {total} bytes")
    return md5.hexdigest(), sha.hexdigest(), size


def _progress(total: int, url: str) -> Any:
    if total < (8 << 20) or not sys.stderr.isatty():
        return None
    from tqdm import tqdm

    return tqdm(total=total, unit="B", unit_scale=True, desc=url.rsplit("/", 1)[-1])


def _safe_parts(name: str, root: str) -> tuple[str, ...] | None:
    """Path parts of a zip member below `root` (None for directories); rejects unsafe names."""
    if name.endswith("/"):
        return None
    pure = PurePosixPath(name.replace("\\", "/"))
    if pure.is_absolute() or ".." in pure.parts or (pure.parts and ":" in pure.parts[0]):
        raise DownloadError(f"unsafe path in archive: {name!r}")
    parts = pure.parts
    if parts and parts[0] == root:
        parts = parts[1:]
    return parts or None


def _extract(archive: Path, root: str, target: Path, last: tuple[str, ...]) -> list[Path]:
    """Unzip `archive` (its `root` folder stripped) into `target`: staged next to it, then moved
    in with `os.replace`, the files named in `last` at the very end."""
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}-extract-"))
    try:
        try:
            with zipfile.ZipFile(archive) as zf:
                for info in zf.infolist():
                    parts = _safe_parts(info.filename, root)
                    if parts is None:
                        continue
                    out = staging.joinpath(*parts)
                    out.parent.mkdir(parents=True, exist_ok=True)
                    with zf.open(info) as src, out.open("wb") as dst:
                        shutil.copyfileobj(src, dst)
        except (zipfile.BadZipFile, zipfile.LargeZipFile, EOFError) as exc:
            raise DownloadError(f"bad zip archive {archive.name}: {exc}") from exc
        files = sorted((f for f in staging.rglob("*") if f.is_file()), key=lambda f: (f.name in last, str(f)))
        moved = []
        for f in files:
            dest = target / f.relative_to(staging)
            dest.parent.mkdir(parents=True, exist_ok=True)
            os.replace(f, dest)
            moved.append(dest)
        return moved
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def download_archive(
    dl: Download, folder: str, files: tuple[str, ...], root: Path, src: str, timeout: float
) -> Path:
    """Download `dl`'s archive from `src` into ``root/folder``; returns that folder. The archive must
    match `dl`'s checksum(s) — else `ChecksumError` and nothing is extracted — and hold one of
    `files` (the last of them is moved into place last)."""
    fd, tmp_name = tempfile.mkstemp(dir=root, prefix=f".{folder}-", suffix=".zip.part")
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        log.info("downloading %s from %s", folder, src)
        md5, sha, size = _stream(src, tmp, timeout)
        for algo, want, got in (("md5", dl.md5, md5), ("sha256", dl.sha256, sha)):
            if want is not None and want.lower() != got:
                raise ChecksumError(
                    f"{algo} checksum mismatch: expected {want}, got {got} ({size} bytes); the download "
                    "is corrupt or the file changed upstream. Nothing was extracted.",
                    source=src,
                )
        target = root / folder
        moved = _extract(tmp, dl.archive_root, target, last=files)
        if not any(f.name in files for f in moved):
            raise DownloadError(f"{src}: archive has none of {', '.join(files)}")
        log.info("%s: %d files in %s (md5 %s, sha256 %s)", folder, len(moved), target, md5, sha)
        return target
    finally:
        tmp.unlink(missing_ok=True)
