"""Launching data-parallel training: ``dynrec train ... --nproc N`` re-runs the same command under
``torchrun`` (``python -m torch.distributed.run --standalone --nproc_per_node N``) on this machine.

Each process trains on its share of every batch (`dynrec.models.neural.distributed`); rank 0
validates, writes checkpoints and saves the model. CPU runs use gloo, one torch thread per process
(torchrun's ``OMP_NUM_THREADS=1``) unless ``--set num_threads=K`` says otherwise; CUDA runs use
NCCL with local rank r on GPU r.

Several machines: start the same command on every node with torchrun's own rendezvous flags, e.g.

    torchrun --nnodes 2 --node_rank 0 --nproc_per_node 4 --master_addr HOST --master_port 29500 \\
        -m dynrec.cli.main train sasrec --dataset ml-1m --out model --set checkpoint_dir=SHARED/ck

(``--node_rank 1`` on the second node). The dataset must be readable on every node and
``checkpoint_dir`` (written by rank 0, read by every rank on resume) must be on a shared file system.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Sequence

from dynrec.errors import DynrecError
from dynrec.models.neural.distributed import env_dist, shutdown
from dynrec.models.registry import create_model

TORCHRUN = (sys.executable, "-m", "torch.distributed.run")
CLI_MODULE = "dynrec.cli.main"


def under_torchrun() -> bool:
    """This process was started by torchrun as one of several ranks."""
    return env_dist().active


def is_main_process() -> bool:
    """Rank 0, or a single process: the one that saves and prints."""
    return env_dist().is_main


def check_distributable(model_name: str) -> None:
    """Refuse models the Trainer does not fit (only neural models train data-parallel)."""
    from dynrec.models.neural.base import TorchRecommender

    if not isinstance(create_model(model_name), TorchRecommender):
        raise DynrecError(
            f"--nproc trains neural models (sasrec, bert4rec, gru4rec, caser, mlp, mf, bpr) data-parallel; "
            f"{model_name!r} trains in one process: drop --nproc"
        )


def strip_option(argv: Sequence[str], option: str) -> list[str]:
    """`argv` without ``option VALUE`` / ``option=VALUE`` (every occurrence)."""
    out: list[str] = []
    skip = False
    for a in argv:
        if skip:
            skip = False
        elif a == option:
            skip = True
        elif not a.startswith(option + "="):
            out.append(a)
    return out


def torchrun_command(
    nproc: int, cli_args: Sequence[str], *, torchrun_args: Sequence[str] = ("--standalone",)
) -> list[str]:
    """The command that runs ``dynrec <cli_args>`` in `nproc` processes on this machine."""
    if nproc < 1:
        raise DynrecError(f"--nproc must be >= 1, got {nproc}")
    return [*TORCHRUN, *torchrun_args, "--nproc_per_node", str(nproc), "-m", CLI_MODULE, *cli_args]


def launch(nproc: int, cli_args: Sequence[str], *, torchrun_args: Sequence[str] = ("--standalone",)) -> int:
    """Run ``dynrec <cli_args>`` under torchrun in `nproc` local processes; returns its exit code
    (non-zero when any rank failed: torchrun stops the others)."""
    if under_torchrun():
        raise DynrecError("already running under torchrun: drop --nproc (torchrun's flags set the processes)")
    env = dict(os.environ)
    return subprocess.run(torchrun_command(nproc, cli_args, torchrun_args=torchrun_args), env=env).returncode


def finish() -> None:
    """Leave the process group after training (no-op in a single process)."""
    shutdown()
