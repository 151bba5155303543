"""The README's two-CPU-process command really runs two processes (DDP over gloo), read from the README itself.

`accelerate launch --cpu --num_processes 2` starts one process only (several CPU processes go through mpirun), so
the README documents configuration/accelerate/cpu_ddp.yaml with ACCELERATE_USE_CPU; this runs that exact line for
one training step and checks that the run sees a world size of 2. No network: the corpus and tokenizer are local.
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from tests.test_training import _free_port

REPO = Path(__file__).resolve().parents[1]


def readme_command() -> list[str]:
    """The `ACCELERATE_USE_CPU=true accelerate launch ...` line of the README's bash block."""
    lines = re.findall(r"^ACCELERATE_USE_CPU=true accelerate launch .*$", (REPO / "README.md").read_text(), re.M)
    assert len(lines) == 1, "the README documents one two-process CPU command"
    return shlex.split(lines[0])


@pytest.mark.slow  # two interpreters, torchrun and a training step: about a minute on 2 cores
def test_readme_command_trains_on_two_cpu_processes(tmp_path):
    env_assignment, accelerate, launch, *rest = readme_command()
    assert (env_assignment, accelerate, launch) == ("ACCELERATE_USE_CPU=true", "accelerate", "launch")
    script = rest.index("scripts/train.py")
    command = [sys.executable, "-m", "accelerate.commands.launch", "--main_process_port", str(_free_port()),
               *rest[:script], str(REPO / rest[script]), *rest[script + 1:],
               "--max_steps", "1", "--eval_batches", "1", "--output_dir", str(tmp_path / "run"),
               "--cache_dir", str(tmp_path / "cache"), "--save_every", "0", "--report_to", "none"]
    env = os.environ | {"ACCELERATE_USE_CPU": "true", "PYTHONPATH": str(REPO), "HF_HUB_OFFLINE": "1",
                        "HF_DATASETS_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    done = subprocess.run(command, env=env, cwd=REPO, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-4000:]
    assert re.search(r"\d+ parameters, 2 processes \(MULTI_CPU\)", done.stderr), done.stderr[-4000:]
    assert (tmp_path / "run" / "final" / "config.json").is_file()
