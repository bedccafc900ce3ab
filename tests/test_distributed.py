"""Two CPU processes (torchrun, gloo) against one process with the same global batch."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

SCRIPT = Path(__file__).parent / "scripts" / "ddp_rrd.py"
pytestmark = pytest.mark.distributed


# --standalone: the launcher binds a free port itself, so concurrent test workers never share a rendezvous.
TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]


def run(command, out_dir):
    env = {**os.environ, "ACCELERATE_USE_CPU": "true", "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, f"{' '.join(map(str, command))} failed:\n{result.stdout[-3000:]}\n{result.stderr[-5000:]}"
    return out_dir


@pytest.mark.parametrize("memory_type", ["fifo", "momentum", "augmented"])
def test_two_processes_match_one_process_with_the_same_global_batch(tmp_path, memory_type):
    two, one = tmp_path / "two", tmp_path / "one"
    two.mkdir(), one.mkdir()
    run(TORCHRUN + [str(SCRIPT), str(two), "4", memory_type], two)
    run([sys.executable, str(SCRIPT), str(one), "8", memory_type], one)

    rank0, rank1 = load_file(two / "rank0.safetensors"), load_file(two / "rank1.safetensors")
    single = load_file(one / "rank0.safetensors")
    assert json.loads((two / "logs0.json").read_text())["world_size"] == 2
    # Identical memory, heads and student on both processes: bit for bit.
    for name in rank0:
        assert torch.equal(rank0[name], rank1[name]), f"{name} differs between the two processes"
    assert int(rank0["distill.rrd.memory.num_updates"]) == 6
    # The same training as one process with the same global batch (up to float summation order).
    for name, value in single.items():
        torch.testing.assert_close(rank0[name], value, rtol=1e-4, atol=1e-5, msg=f"{name}: 2x4 differs from 1x8")
    logs_two = json.loads((two / "logs0.json").read_text())["logs"]
    logs_one = json.loads((one / "logs0.json").read_text())["logs"]
    for a, b in zip(logs_two, logs_one):
        for key in ("loss", "loss_ce", "loss_kd", "loss_rrd"):
            assert a[key] == pytest.approx(b[key], rel=1e-4, abs=1e-6), key


def test_crd_banks_stay_identical_on_every_process(tmp_path):
    run(TORCHRUN + [str(SCRIPT), str(tmp_path), "4", "crd"], tmp_path)
    rank0, rank1 = load_file(tmp_path / "rank0.safetensors"), load_file(tmp_path / "rank1.safetensors")
    banks = [name for name in rank0 if name.startswith("distill.crd.memory.")]
    assert banks, "no CRD memory in the saved state"
    for name in rank0:
        assert torch.equal(rank0[name], rank1[name]), f"{name} differs between the two processes"
    # 6 steps x 2 processes x 4 samples = 48 distinct samples written into the banks of 48 slots
    assert int(rank0["distill.crd.memory.num_updates"]) == 6
