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


def _paired():
    sys.path.insert(0, str(ROOT / "benchmarks"))
    try:
        import paired
    finally:
        sys.path.remove(str(ROOT / "benchmarks"))
    return paired


def test_pairs_run_interleaved_in_abba_order():
    order = []
    pairs = _paired().interleave(lambda: order.append("a") or len(order), lambda: order.append("b") or len(order), 4)
    assert order == ["a", "b", "b", "a", "a", "b", "b", "a"]
    assert pairs == [(1, 2), (4, 3), (5, 6), (8, 7)]  # each pair is (a's result, b's result)


def test_headline_is_the_median_of_paired_ratios_and_best_runs_apart():
    ratios = _paired().ratios
    rates = [(100.0, 50.0), (90.0, 90.0), (80.0, 100.0)]  # paired ratios 2.0, 1.0, 0.8
    median, best = ratios(rates)
    assert median == 1.0 and best == 1.0  # best: 100 / 100
    assert ratios([(110.0, 100.0), (50.0, 100.0), (104.0, 100.0)]) == (1.04, 1.1)


def test_each_benchmark_prints_its_headline_and_best_runs_lines():
    """The ``... overhead ratio`` line is the paired median, the best-runs ratio has its own line."""
    for script, headline, best in (("overhead.py", 'f"overhead ratio {name}: {median:.3f}"',
                                    'f"best-runs ratio {name}: {best:.3f}"'),
                                   ("dashboard.py", 'f"dashboard overhead ratio: {median:.3f}"',
                                    'f"dashboard best-runs ratio: {best:.3f}"'),
                                   ("ray_grid.py", 'f"ray grid speedup (4 runs): {median:.2f}"',
                                    'f"ray grid best-runs speedup (4 runs): {best:.2f}"'),
                                   ("gpu_check.py", 'f"gpu overhead ratio {case}: {median:.3f}"',
                                    'f"gpu best-runs ratio {case}: {best:.3f}"')):
        source = (ROOT / "benchmarks" / script).read_text()
        assert "from paired import interleave, ratios" in source and headline in source and best in source, script


def test_feature_cache_benchmark_quick_runs_and_reports():
    out = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "feature_cache.py"), "--quick"],
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert "feature cache speedup (2 runs):" in out.stdout and "feature cache speedup (3 runs):" in out.stdout
    assert "peak memory:" in out.stdout


@pytest.mark.parametrize(("mode", "lines"), [
    ("--watch --breakdown", ("watch overhead ratio: ", "watch best-runs ratio: ",
                             "watch overhead ratio without the alignment probe: ", "pieces of one watched loop run",
                             "gradient norms (one per parameter tensor)", "alignment probe samples")),
    ("--hf --breakdown", ("hf callback overhead ratio: ", "hf callback best-runs ratio: ",
                          "pieces of one toy BERT Trainer run", "the model's forward hook")),
    ("--hf --hf-model bert-tiny", ("hf callback overhead ratio bert-tiny: ", "hf callback best-runs ratio bert-tiny: ")),
])
def test_overhead_watch_and_hf_modes_quick_run_and_print_their_lines(mode, lines):
    if mode.startswith("--hf"):
        pytest.importorskip("transformers")
    out = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "overhead.py"), *mode.split(), "--quick"],
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert all(line in out.stdout for line in lines), out.stdout
    assert "overhead ratio digits_cnn" not in out.stdout  # the mode runs alone


def test_grad_norms_benchmark_runs_and_reports_each_way():
    out = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "grad_norms.py")],
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    for way in ("foreach", "segments", "numpy"):
        assert f"grad norms digits_cnn {way}: warm " in out.stdout and ", in situ " in out.stdout, out.stdout
