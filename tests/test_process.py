"""rrd_hf is a library: importing it and training with it leave the caller's process as they found it.

Each check runs in a fresh interpreter, as a user's program would: the garbage collector's settings, the heavy
imports, the memory a program frees after training, and the process-wide settings of `full_determinism`.
Only rrd_hf's own command line tunes its processes (`rrd_hf.commands.process`).
"""

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def run_python(code: str, timeout: float = 300) -> dict:
    """Run `code` in a fresh interpreter; it prints one JSON object as its last line."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(REPO)}
    result = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True,
                            timeout=timeout, cwd=REPO, env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


def test_import_leaves_the_garbage_collector_alone_and_imports_nothing_heavy():
    found = run_python("""
        import gc, json, sys
        gc.set_threshold(1234, 5, 6)
        before = [gc.isenabled(), gc.get_threshold(), gc.get_freeze_count()]
        import rrd_hf
        after = [gc.isenabled(), gc.get_threshold(), gc.get_freeze_count()]
        heavy = sorted(name for name in ("torch", "transformers", "datasets", "accelerate") if name in sys.modules)
        print(json.dumps({"before": before, "after": after, "heavy": heavy, "names": sorted(dir(rrd_hf))}))
    """)
    assert found["after"] == found["before"] == [True, [1234, 5, 6], 0]
    assert found["heavy"] == []
    assert {"RRDConfig", "RRDTrainer", "FrozenTeacher", "rrd_loss"} <= set(found["names"])


def test_public_names_resolve_lazily_and_unknown_names_fail_as_attributes():
    import rrd_hf

    for name in rrd_hf.__all__:
        assert getattr(rrd_hf, name) is not None
    with pytest.raises(AttributeError, match="no attribute 'not_a_name'"):
        rrd_hf.not_a_name  # noqa: B018


# A program that trains, then allocates and frees a large amount of memory in blocks below glibc's largest mmap
# threshold (as arrays, tensors and buffers of a data pipeline are): the freed memory goes back to the system.
FREE_AFTER_TRAINING = """
    import json, sys
    sys.path.insert(0, "tests")
    import torch
    from helpers import TinyImageDataset, tiny_model
    from rrd_hf import RRDConfig, RRDTrainer

    def resident_mib():
        with open("/proc/self/statm") as handle:
            return int(handle.read().split()[1]) * 4096 / 2**20

    args = RRDConfig(output_dir=sys.argv[1] if len(sys.argv) > 1 else OUTPUT, max_steps=2,
                     per_device_train_batch_size=8, memory_size=32, use_cpu=True, report_to="none",
                     disable_tqdm=True, save_strategy="no", dataloader_num_workers=0, kd_weight=1.0)
    RRDTrainer(model=tiny_model(seed=1), teacher_model=tiny_model(seed=2), args=args,
               train_dataset=TinyImageDataset(32, with_index=True)).train()
    base = resident_mib()
    blocks = [torch.ones(2 * 2**20) for _ in range(96)]  # 96 blocks of 8 MiB: 768 MiB
    held = resident_mib()
    del blocks
    print(json.dumps({"base": base, "held": held, "freed": resident_mib()}))
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/self/statm")
def test_memory_freed_after_training_goes_back_to_the_system(tmp_path):
    found = run_python(f"OUTPUT = {str(tmp_path / 'out')!r}\n" + textwrap.dedent(FREE_AFTER_TRAINING))
    assert found["held"] - found["base"] > 700  # the blocks were resident
    assert found["freed"] - found["base"] < 100, found  # and were given back once freed


def test_the_check_above_can_fail_when_a_process_keeps_freed_memory(tmp_path):
    """What the command line does to its own processes (`keep_freed_host_memory`), done here to a test process:
    the same program then keeps the freed blocks, so the check above would see a library that did it."""
    code = ("from rrd_hf.commands.process import keep_freed_host_memory\nassert keep_freed_host_memory()\n"
            f"OUTPUT = {str(tmp_path / 'out')!r}\n" + textwrap.dedent(FREE_AFTER_TRAINING))
    found = run_python(code)
    assert found["freed"] - found["base"] > 500, found


def test_full_determinism_applies_while_training_and_is_undone_after():
    found = run_python("""
        import json, os, sys, tempfile
        sys.path.insert(0, "tests")
        import torch
        from transformers import TrainerCallback
        from helpers import TinyImageDataset, tiny_model
        from rrd_hf import RRDConfig, RRDTrainer

        def settings():
            return {"algorithms": torch.are_deterministic_algorithms_enabled(),
                    "cudnn": [torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark],
                    "env": {k: os.environ.get(k) for k in ("CUBLAS_WORKSPACE_CONFIG", "CUDA_LAUNCH_BLOCKING")}}

        class Seen(TrainerCallback):
            def on_step_begin(self, args, state, control, **kwargs):
                during.append(settings())

        torch.backends.cudnn.benchmark = True
        before, during = settings(), []
        args = RRDConfig(output_dir=tempfile.mkdtemp(), max_steps=2, per_device_train_batch_size=8, memory_size=32,
                         use_cpu=True, report_to="none", disable_tqdm=True, save_strategy="no",
                         dataloader_num_workers=0, full_determinism=True)
        trainer = RRDTrainer(model=tiny_model(seed=1), teacher_model=tiny_model(seed=2), args=args,
                             train_dataset=TinyImageDataset(32, with_index=True), callbacks=[Seen()])
        built = settings()
        trainer.train()
        print(json.dumps({"before": before, "built": built, "during": during, "after": settings()}))
    """)
    assert found["built"] == found["before"] == found["after"]
    assert found["before"]["algorithms"] is False and found["before"]["cudnn"] == [False, True]
    assert found["during"] and all(seen == {"algorithms": True, "cudnn": [True, False],
                                            "env": {"CUBLAS_WORKSPACE_CONFIG": ":16:8", "CUDA_LAUNCH_BLOCKING": "1"}}
                                   for seen in found["during"])
