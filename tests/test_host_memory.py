"""`keep_host_memory`: a training step reuses the host memory of the step before instead of faulting in new pages."""

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from test_trainer import make_trainer

glibc_only = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="mallopt is glibc's (Linux)")

HOST_MEMORY = Path(__file__).resolve().parents[1] / "rrd_hf" / "host_memory.py"

# In a fresh process that allocates through glibc only (no torch, whose import moves glibc's thresholds): a 20 MiB
# block, once freed, lifts the mmap threshold to 20 MiB and the trim threshold to 40 MiB. A "step" that then
# allocates, writes and frees three 15 MiB blocks frees 45 MiB at the top of the heap, which glibc trims back to the
# OS, so the next step faults all of its pages in again: the pattern of a CPU training step. The script prints the
# heap glibc keeps after a step (mallinfo2's arena) and the page faults per step.
STEPS = textwrap.dedent("""
    import ctypes, importlib.util, resource, sys
    libc = ctypes.CDLL(None)
    libc.malloc.restype, libc.malloc.argtypes = ctypes.c_void_p, [ctypes.c_size_t]
    libc.free.argtypes = [ctypes.c_void_p]
    class MallInfo2(ctypes.Structure):
        _fields_ = [(name, ctypes.c_size_t) for name in ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks",
                                                          "fsmblks", "uordblks", "fordblks", "keepcost")]
    libc.mallinfo2.restype = MallInfo2
    if sys.argv[1] == "keep":
        spec = importlib.util.spec_from_file_location("host_memory", sys.argv[2])
        host_memory = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(host_memory)
        assert host_memory.keep_freed_host_memory()
    libc.free(libc.malloc(20 * 2**20))
    def step():
        blocks = [libc.malloc(15 * 2**20) for _ in range(3)]
        for block in blocks:
            ctypes.memset(block, 1, 15 * 2**20)
        for block in blocks:
            libc.free(block)
    step(); step()
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(5):
        step()
    print(libc.mallinfo2().arena, (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before) / 5)
""")


def heap_and_faults(mode: str) -> tuple[int, float]:
    out = subprocess.run([sys.executable, "-c", STEPS, mode, str(HOST_MEMORY)], capture_output=True, text=True,
                         timeout=120, check=True)
    heap, faults = out.stdout.split()
    return int(heap), float(faults)


@glibc_only
def test_kept_memory_stays_with_the_process_and_a_repeated_step_faults_no_pages():
    blocks, pages = 45 * 2**20, 45 * 2**20 // 4096
    default_heap, default_faults = heap_and_faults("default")
    kept_heap, kept_faults = heap_and_faults("keep")
    assert default_heap < blocks and default_faults > pages / 2, (
        f"without the setting glibc trims the freed blocks (heap {default_heap}, {default_faults:.0f} faults per step)")
    assert kept_heap >= blocks, f"the freed 45 MiB should stay in the heap (heap {kept_heap})"
    assert kept_faults < pages / 20, f"{kept_faults:.0f} page faults per step with keep_host_memory"


@pytest.mark.parametrize("keep", [True, False])
def test_the_trainer_applies_it_only_when_asked(tmp_path, monkeypatch, keep):
    calls = []
    monkeypatch.setattr("rrd_hf.trainer.keep_freed_host_memory", lambda: calls.append(1) or True)
    make_trainer(tmp_path, max_steps=1, keep_host_memory=keep).train()
    assert calls == ([1] if keep else [])
