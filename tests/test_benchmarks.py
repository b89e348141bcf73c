"""The benchmark scripts stay runnable (their numbers live in the README, not in tests)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.skipif(torch.cuda.is_available(), reason="on a CUDA machine the check runs for real")
def test_gpu_check_without_cuda_says_so_and_exits_0():
    out = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "gpu_check.py")], capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0, out.stderr
    assert "no CUDA device here" in out.stdout


def test_feature_cache_benchmark_quick_runs_and_reports():
    out = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "feature_cache.py"), "--quick"],
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert "feature cache speedup (2 runs):" in out.stdout and "feature cache speedup (3 runs):" in out.stdout
    assert "peak memory:" in out.stdout
