"""benchmarks/feature_cache.py --model efficientnet (torchvision's EfficientNet-B0, frozen_eval=True)
runs and reports its line; a smoke run on tiny data (the measurement is ./dev bench's)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_efficientnet_cache_benchmark_quick_runs_and_reports():
    out = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "feature_cache.py"), "--model", "efficientnet",
                          "--quick"], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert "EfficientNet" in out.stdout and "feature cache speedup (efficientnet, 3 runs):" in out.stdout
