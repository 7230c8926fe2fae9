"""skelcl.hostmem: freed host memory stays in the process, so a step's buffers are not page-faulted
afresh every time. Run in subprocesses: the setting is process-wide."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# Allocates, touches and frees a 64 MiB tensor 17 times; prints the minor page faults of the last 7
# (glibc reuses the freed block only after a few rounds: aligned allocations ask for slightly more).
_PROGRAM = """
import resource, sys, torch
from skelcl.hostmem import retain_freed_host_memory
applied = retain_freed_host_memory() if sys.argv[1] == "on" else False
def touch():
    torch.ones(16 << 20).sum()
for _ in range(10):
    touch()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(7):
    touch()
print(applied, resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


def _faults(mode: str, **env) -> tuple[str, int]:
    out = subprocess.run([sys.executable, "-c", _PROGRAM, mode], capture_output=True, text=True, check=True,
                         cwd=ROOT, env=os.environ | {"PYTHONPATH": ROOT} | env, timeout=120)
    applied, faults = out.stdout.split()
    return applied, int(faults)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's malloc only")
def test_retained_memory_is_not_faulted_again():
    applied, faults_on = _faults("on")
    if applied != "True":
        pytest.skip("malloc here is not glibc's")
    _, faults_off = _faults("off")
    pages = 7 * (64 << 20) // 4096  # what re-faulting every allocation costs
    assert faults_off > pages // 2  # the problem exists without the setting ...
    assert faults_on < pages // 20  # ... and is gone with it


def test_environment_variable_turns_it_off():
    applied, _ = _faults("on", SKELCL_RETAIN_HOST_MEMORY="0")
    assert applied == "False"
