"""The one recipe the tests use to run a training script as two cooperating CPU processes.

accelerate 1.15's ``accelerate launch --cpu --num_processes 2`` starts ONE process on a machine without an MPI
hostfile, so a test built on it passes without any distributed code running. ``--multi_gpu`` runs torchrun
instead; with ``CUDA_VISIBLE_DEVICES=""`` the scripts build ``Accelerator(cpu=not torch.cuda.is_available())``
and the two ranks form a gloo MULTI_CPU group: the same DDP path as on GPUs. :func:`assert_two_cpu_processes`
checks that the run says so itself.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]


def two_cpu_processes(script: str | Path, *script_args: str) -> tuple[list[str], dict[str, str]]:
    """The command and environment that run ``script script_args...`` as a 2-process gloo group on CPU.

    Pass both to ``subprocess.run(command, env=env, ...)``. One torch thread per process, so the two ranks
    fit on two cores; the repository is on ``PYTHONPATH`` so the script imports ``mmdemo`` from this checkout.
    """
    python_path = os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH", "")) if p)
    env = {
        **os.environ,
        "OMP_NUM_THREADS": "1",
        "MMDEMO_NUM_THREADS": "1",
        "CUDA_VISIBLE_DEVICES": "",
        "PYTHONPATH": python_path,
        # torchrun's default port (29500) is shared by every launch on the machine, and a port picked free now
        # can be taken before the launcher binds it. torchrun's --standalone (read from PET_STANDALONE by the
        # torchrun parser accelerate uses) starts its rendezvous store on port 0: the OS picks the port as it
        # binds it, and the ranks read it back from the store.
        "PET_STANDALONE": "1",
    }
    command = [
        sys.executable,
        "-m",
        "accelerate.commands.launch",
        "--multi_gpu",
        "--num_processes",
        "2",
        "--num_machines",
        "1",
        "--mixed_precision",
        "no",
        "--dynamo_backend",
        "no",
        str(script),
        *script_args,
    ]
    return command, env


def assert_two_cpu_processes(record: dict[str, Any]) -> None:
    """The run's own record (summary, training_args.json, config.json) says two processes in a gloo group."""
    assert record["processes"] == 2, f"{record['processes']} process(es) trained, not 2"
    assert str(record["distributed_type"]).endswith("MULTI_CPU"), record["distributed_type"]
