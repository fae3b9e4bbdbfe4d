"""Every command of README.md runs, in order, in a fresh temporary directory, so the README cannot rot.

The ```bash blocks run line by line with ``bash`` (a line ending in ``\\`` continues on the next),
with this interpreter's environment first on PATH (where ``dynrec`` is), ``DYNREC_DATA_DIR`` pointing
at the real data (ml-100k) and ``DYNREC_OFFLINE=1`` (nothing is downloaded); the ```python blocks
run with this interpreter. Every command must exit 0.

Not re-run: ``make demo`` and ``make test`` (the first block). ``make test`` is this suite, and
``make demo``'s part that the README relies on — the models it saves as ``runs/ml-100k-<model>`` —
is made by the demo module itself with fewer models and epochs (`DEMO_ARGS`), so the other commands
find the folders the demo really writes.

The user's "own data" is ``events.csv``: 2,000 ml-100k events (20 per user, 100 users) under the
headers ``userId,movieId,timestamp``, as a newcomer's file might have them.

A ``dynrec serve`` line is started in the background on a free port (``--port`` appended; later
``localhost:8000`` in the same block point there), waited for (``/healthz``) and stopped when its
block ends. Every ``curl`` must answer JSON without an error; asking for recommendations must give
items. While the model trained on ``events.csv`` is served, every user of that file must get the
model's recommendations, not the popular fallback — the newcomer's path (own CSV -> train ->
evaluate -> serve) checked with the README's own commands.
"""

from __future__ import annotations

import importlib
import json
import os
import re
import shlex
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from tests.serve_process import free_port

REPO = Path(__file__).resolve().parents[2]
README = REPO / "README.md"
NOT_RERUN = ("make demo", "make test")
DEMO_ARGS = ("--models", "als,gru4rec", "--set", "gru4rec.epochs=2", "--no-serve", "--out", "runs")
OWN_DATA = "events.csv"
COMMAND_TIMEOUT_S = 600
SERVE_START_TIMEOUT_S = 120
DEFAULT_PORT = 8000

FENCE = re.compile(r"^```(\w*)\s*$")


@dataclass(frozen=True)
class Block:
    """A fenced code block: its language, its text lines and the README line it starts on."""

    lang: str
    lines: tuple[str, ...]
    lineno: int


def code_blocks(text: str) -> list[Block]:
    """The fenced blocks of a Markdown text, in order."""
    blocks: list[Block] = []
    lang: str | None = None
    body: list[str] = []
    start = 0
    for i, line in enumerate(text.splitlines(), 1):
        m = FENCE.match(line)
        if lang is None:
            if m:
                lang, body, start = m.group(1), [], i
        elif line.strip() == "```":
            blocks.append(Block(lang, tuple(body), start))
            lang = None
        else:
            body.append(line)
    assert lang is None, f"README.md: the code block opened on line {start} is never closed"
    return blocks


def shell_commands(block: Block) -> list[str]:
    """The commands of a shell block: continuation lines joined, blank and comment-only lines dropped."""
    out: list[str] = []
    pending = ""
    for line in block.lines:
        if line.rstrip().endswith("\\"):
            pending += line.rstrip()[:-1] + " "
            continue
        command = (pending + line).strip()
        pending = ""
        if command and not command.startswith("#"):
            out.append(command)
    assert not pending, f"README.md block on line {block.lineno} ends inside a continued line"
    return out


def words(command: str) -> list[str]:
    return shlex.split(command, comments=True)


def is_serve(command: str) -> bool:
    return words(command)[:2] == ["dynrec", "serve"]


def option(command: str, name: str) -> str | None:
    """The value of ``--name VALUE`` in a command, else None."""
    w = words(command)
    return w[w.index(name) + 1] if name in w[:-1] else None


# ---- fast checks of the parser and the README's shape --------------------------------------------


def test_code_blocks_and_commands_are_read_as_bash_reads_them() -> None:
    text = "# t\n\n```bash\na 1   # note\n# only a comment\n\nb \\\n   --x 2\n```\ntext\n```python\nprint(1)\n```\n"
    blocks = code_blocks(text)
    assert [(b.lang, b.lineno) for b in blocks] == [("bash", 3), ("python", 11)]
    assert shell_commands(blocks[0]) == ["a 1   # note", "b     --x 2"]
    assert words("dynrec serve runs/x   # comment") == ["dynrec", "serve", "runs/x"]
    assert is_serve("dynrec serve runs/x --store memory://") and not is_serve("dynrec train x")
    assert option("dynrec train m --dataset events.csv --out runs/m", "--out") == "runs/m"
    assert option("dynrec train m --out", "--out") is None


def test_readme_starts_with_the_two_commands_then_what_dynrec_is_and_the_picture() -> None:
    """The product rule: a title, exactly ``make demo`` and ``make test`` (each saying how long it
    takes), then what dynrec is and the page's screenshot, before any other section."""
    text = README.read_text()
    lines = text.splitlines()
    assert lines[0] == "# dynrec"
    first = code_blocks(text)[0]
    assert first.lang == "bash"
    commands = shell_commands(first)
    assert [words(c) for c in commands] == [["make", "demo"], ["make", "test"]]
    assert all(re.search(r"\d+ min", c) for c in commands), "each of the two commands says how long it takes"
    before_sections = text.split("\n## ", 1)[0]
    assert "dynrec recommends" in before_sections
    assert "](docs/page.png)" in before_sections


def test_the_one_definition_table_names_importable_definitions() -> None:
    """Every ``dynrec.…`` name in the Architecture table imports (a module, or an attribute of one)."""
    text = README.read_text()
    section = text.split("\n## Architecture\n", 1)[1].split("\n## ", 1)[0]
    rows = [line for line in section.splitlines() if line.startswith("| ") and "dynrec." in line]
    assert len(rows) >= 5
    for row in rows:
        for name in re.findall(r"`(dynrec\.[\w.]+)`", row):
            parts = name.split(".")
            for cut in range(len(parts), 0, -1):
                try:
                    obj: object = importlib.import_module(".".join(parts[:cut]))
                except ImportError:
                    continue
                for attr in parts[cut:]:
                    obj = getattr(obj, attr)
                break
            else:  # pragma: no cover - a failure message
                pytest.fail(f"{name} does not import")


def test_the_readme_links_point_at_files_of_the_repository() -> None:
    """Every relative link and image of README.md (docs pages, the screenshot) exists."""
    targets = re.findall(r"\]\(([^)#\s]+)[^)]*\)", README.read_text())
    local = [t for t in targets if "://" not in t]
    assert "docs/page.png" in local
    missing = [t for t in local if not (REPO / t).exists()]
    assert not missing, f"README.md links to missing files: {missing}"


def test_the_readme_holds_the_own_data_path() -> None:
    """Train on ``events.csv``, evaluate that model and serve it: all three are README commands."""
    commands = [c for b in code_blocks(README.read_text()) if b.lang == "bash" for c in shell_commands(b)]
    trained = [
        option(c, "--out") for c in commands if words(c)[:2] == ["dynrec", "train"] and OWN_DATA in words(c)
    ]
    assert trained and trained[0] is not None, f"no README command trains on {OWN_DATA}"
    model_dir = trained[0]
    assert any(words(c)[:3] == ["dynrec", "evaluate", model_dir] for c in commands)
    assert any(words(c)[:3] == ["dynrec", "serve", model_dir] for c in commands)


# ---- running every block --------------------------------------------------------------------------


def write_own_data(path: Path, ratings: Path, users: int = 100, per_user: int = 20) -> set[str]:
    """``events.csv`` from ml-100k's ``u.data``: the first `per_user` events (by time) of the first
    `users` users; returns the user ids written."""
    by_user: dict[int, list[tuple[int, int]]] = {}
    for line in ratings.read_text().splitlines():
        u, i, _, t = (int(x) for x in line.split("\t"))
        by_user.setdefault(u, []).append((t, i))
    chosen = sorted(by_user)[:users]
    with path.open("w") as f:
        f.write("userId,movieId,timestamp\n")
        for u in chosen:
            for t, i in sorted(by_user[u])[:per_user]:
                f.write(f"{u},{i},{t}\n")
    return {str(u) for u in chosen}


class Runner:
    """Runs README commands in one working directory; at most one background server at a time."""

    def __init__(self, cwd: Path, env: dict[str, str]) -> None:
        self.cwd, self.env = cwd, env
        self.server: subprocess.Popen[bytes] | None = None
        self.port = DEFAULT_PORT
        self.served: str | None = None
        self.log = cwd / "serve.log"
        self.timings: list[tuple[float, str]] = []  # (seconds, command): printed at the end

    def run(self, command: str, where: str) -> str:
        if self.server is not None:
            command = re.sub(rf"\b(localhost|127\.0\.0\.1):{DEFAULT_PORT}\b", rf"\1:{self.port}", command)
        start = time.monotonic()
        try:
            done = subprocess.run(
                ["bash", "-c", command],
                cwd=self.cwd,
                env=self.env,
                capture_output=True,
                text=True,
                timeout=COMMAND_TIMEOUT_S,
            )
        except subprocess.TimeoutExpired:
            pytest.fail(f"{where}: `{command}` ran over {COMMAND_TIMEOUT_S} s")
        self.timings.append((time.monotonic() - start, command))
        assert done.returncode == 0, (
            f"{where}: `{command}` exited {done.returncode}\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
        )
        if words(command)[:1] == ["curl"]:
            check_answer(command, done.stdout, where)
        return done.stdout

    def serve(self, command: str, where: str) -> None:
        assert self.server is None
        self.port = free_port()
        argv = [*words(command), "--port", str(self.port)]
        with self.log.open("ab") as out:
            self.server = subprocess.Popen(
                argv, cwd=self.cwd, env=self.env, stdout=out, stderr=subprocess.STDOUT
            )
        self.served = argv[2]
        start = time.monotonic()
        deadline = start + SERVE_START_TIMEOUT_S
        while True:
            if self.server.poll() is not None:
                pytest.fail(
                    f"{where}: `{command}` exited {self.server.returncode}\n{self.log.read_text()[-3000:]}"
                )
            try:
                if httpx.get(f"{self.url}/healthz", timeout=2).status_code == 200:
                    self.timings.append((time.monotonic() - start, command + "  (until it answers)"))
                    return
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"{where}: `{command}` did not answer within {SERVE_START_TIMEOUT_S} s")
            time.sleep(0.2)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def stop(self) -> None:
        if self.server is None:
            return
        self.server.terminate()
        try:
            self.server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.server.kill()
            self.server.wait()
        self.server, self.served = None, None


def check_answer(command: str, stdout: str, where: str) -> None:
    """A curl answer is JSON without an error; recommendations hold items."""
    try:
        body = json.loads(stdout)
    except ValueError:
        pytest.fail(f"{where}: `{command}` did not answer JSON: {stdout[:500]!r}")
    assert isinstance(body, dict) and "detail" not in body, f"{where}: `{command}` answered {stdout[:500]}"
    if "/recommendations" in command:
        assert body["items"], f"{where}: `{command}` recommended nothing"


def check_own_users_served_by_the_model(url: str, users: set[str]) -> None:
    fallback = []
    for user in sorted(users, key=int):
        body = httpx.get(f"{url}/v1/users/{user}/recommendations", params={"k": 5}, timeout=30).json()
        assert len(body["items"]) == 5, body
        if body["fallback"] is not None:
            fallback.append(user)
    assert not fallback, f"users of {OWN_DATA} answered with the popular fallback: {fallback}"


@pytest.mark.slow
def test_every_readme_command_runs(tmp_path: Path) -> None:
    data_dir = Path(os.environ["DYNREC_DATA_DIR"])
    ratings = data_dir / "ml-100k" / "u.data"
    if not ratings.is_file():
        pytest.fail(f"ml-100k is needed: {ratings} is missing (set DYNREC_DATA_DIR)")
    bin_dir = str(Path(sys.executable).parent)
    env = {
        **os.environ,
        "PATH": bin_dir + os.pathsep + os.environ.get("PATH", ""),
        "DYNREC_DATA_DIR": str(data_dir),
        "DYNREC_OFFLINE": "1",
        "DEMO_SERVE": "0",
        "PYTHONUNBUFFERED": "1",
    }
    own_users = write_own_data(tmp_path / OWN_DATA, ratings)
    start = time.monotonic()
    demo = subprocess.run(
        [sys.executable, "-m", "dynrec.cli.demo", *DEMO_ARGS],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=COMMAND_TIMEOUT_S,
    )
    assert demo.returncode == 0, demo.stdout[-3000:] + demo.stderr[-3000:]

    own_model: str | None = None
    runner = Runner(tmp_path, env)
    runner.timings.append((time.monotonic() - start, "python -m dynrec.cli.demo " + " ".join(DEMO_ARGS)))
    ran = 0
    try:
        for block in code_blocks(README.read_text()):
            where = f"README.md block at line {block.lineno}"
            if block.lang == "python":
                script = tmp_path / f"readme_{block.lineno}.py"
                script.write_text("\n".join(block.lines) + "\n")
                runner.run(f"{shlex.quote(sys.executable)} {script.name}", where)
                ran += 1
                continue
            if block.lang != "bash":
                continue
            for command in shell_commands(block):
                w = words(command)
                if " ".join(w) in NOT_RERUN:
                    continue
                if w[:2] == ["dynrec", "train"] and OWN_DATA in w:
                    own_model = option(command, "--out")
                if is_serve(command):
                    runner.serve(command, where)
                else:
                    runner.run(command, where)
                ran += 1
            if runner.served is not None and runner.served == own_model:
                check_own_users_served_by_the_model(runner.url, own_users)
                own_model = None  # checked
            runner.stop()
    finally:
        runner.stop()
        for seconds, command in runner.timings:
            print(f"{seconds:7.1f} s  {command}")
    assert own_model is None, f"the model trained on {OWN_DATA} was never served by a README command"
    assert ran >= 15
