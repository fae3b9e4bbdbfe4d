"""No tracked file may hold an absolute path of a build machine (under work, root or home at the top).

Such paths only work on the machine that wrote them; the repository uses paths relative to itself,
environment variables (``DYNREC_DATA_DIR``, ``PEERS_DIR``) or ``~/`` expansions instead.
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
MACHINE_PATH = re.compile(r"(?<![\w.~])/(work|root|home)/")
ALLOWED = {".gitignore"}


def tracked_text_files() -> list[Path]:
    try:
        out = subprocess.run(["git", "ls-files", "-z"], cwd=REPO, capture_output=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        pytest.skip("not a git checkout")
    files = []
    for name in out.decode().split("\0"):
        path = REPO / name
        if name and name not in ALLOWED and path.is_file():
            files.append(path)
    return files


def test_no_absolute_machine_paths() -> None:
    offenders = []
    for path in tracked_text_files():
        data = path.read_bytes()
        if b"\0" in data[:8192]:  # binary (images, archives)
            continue
        for lineno, line in enumerate(data.decode("utf-8", errors="replace").splitlines(), 1):
            if MACHINE_PATH.search(line):
                offenders.append(f"{path.relative_to(REPO)}:{lineno}: {line.strip()[:120]}")
    assert not offenders, "absolute build-machine paths in tracked files:\n" + "\n".join(offenders)


MAX_LINES = 500


def test_no_source_file_over_500_lines_but_model_implementations() -> None:
    """One job per file: a module past 500 lines holds more than one; a model implementation (the
    module a registry entry names, or a file of its package) may be longer."""
    from dynrec.models import registry

    models = {entry.split(":")[0] for entry in registry.MODELS.values()}
    src = REPO / "src"
    long = []
    for path in sorted((src / "dynrec").rglob("*.py")):
        module = ".".join(path.relative_to(src).with_suffix("").parts).removesuffix(".__init__")
        if any(module == m or module.startswith(f"{m}.") for m in models):
            continue
        n = len(path.read_text().splitlines())
        if n > MAX_LINES:
            long.append(f"{path.relative_to(REPO)}: {n} lines")
    assert not long, "split these (one job per file): " + "; ".join(long)
