"""The examples' quick modes and the demo run end to end (each checks itself and exits non-zero on a
mismatch)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def run(*args: str) -> str:
    env = dict(os.environ, XLA_FLAGS="")  # one host device, as a user would have
    done = subprocess.run([sys.executable, *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return done.stdout


def test_demo():
    out = run("-m", "jax_qkrope.demo", "--tokens", "16")
    assert out.count("-> OK") == 2


@pytest.mark.parametrize("script", ["examples/qwen3_block.py", "examples/train_tiny.py"])
def test_example_quick_mode(script):
    pytest.importorskip("flax")
    pytest.importorskip("optax")
    out = run(script, "--quick")  # exits non-zero when the fused and plain versions disagree
    assert "fused" in out


def test_bench_quick_writes_records(tmp_path):
    run("-m", "jax_qkrope.bench", "--quick", "--tokens", "1", "--styles", "neox", "--backward", "--name", "t",
        "--out", str(tmp_path))
    forward = json.loads((tmp_path / "t_forward.json").read_text())
    backward = json.loads((tmp_path / "t_backward.json").read_text())
    assert {"heads", "T", "style", "dtype", "ours_us", "xla_us", "bound_us", "copy_gbps"} <= forward[0].keys()
    assert {"heads", "T", "style", "bwd_us", "bwd_bound_us", "fwdbwd_us", "xla_fwdbwd_us"} <= backward[0].keys()
