"""The committed calibrations (the H100's, which is the architecture's sm90.json, and the H200's own) against
the sweeps they came from (benchmarks/calibrate.py output kept under benchmarks/results): the dispatch reads
exactly that table for that GPU, and at every measured point the automatic choice issues the same launch as the
fastest forced N, so auto is the best forced N there by construction."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from jax_qkrope import dispatch

RESULTS = Path(__file__).parents[1] / "benchmarks" / "results"
# The H100's sweep: session 30's full calibration on the H100 (the L2 policy's limit and its timings, the PDL
# cut-off; no shared cos/sin rows, shared_rows_min_bytes 0), with the tuned head_dims (64, 128, 256) re-measured at
# T = 1-512 in session 38 on the single-pair kernel that N = 1 and 2 run there now (8-warp blocks, arguments
# ordered by first use), and the 64- and 128-dim classes at T = 1-2048 in session 39, where N = 4 and 8 run it too.
SWEEP = RESULTS / "run33_floor_probe" / "2_lean_four" / "calibration_sm90_sweep.json"
# The H200's sweep (sm90_nvidia_h200.json), session 28: a full calibration on the H200 of the kernels that ship
# (FastDivisor, branch-free L2 policies), the L2 policy's limit and the PDL cut-off included, with session 26's
# shared_rows_min_bytes (32 MiB) carried: every forced N above it was timed with its rows in shared memory.
H200_SWEEP = RESULTS / "run25_policy_select" / "2_calibration_bench1" / "calibration_sm90_sweep.json"
H100 = dispatch.DeviceFacts((9, 0), 132, "NVIDIA H100 80GB HBM3")
H200 = dispatch.DeviceFacts((9, 0), 132, "NVIDIA H200")
SWEEPS = {H100: SWEEP, H200: H200_SWEEP}


@pytest.fixture(scope="module", params=list(SWEEPS), ids=lambda facts: facts.name)
def device(request) -> dispatch.DeviceFacts:
    return request.param


@pytest.fixture(scope="module")
def sweep(device) -> dict:
    return json.loads(SWEEPS[device].read_text())


def test_committed_table_is_the_sweeps(device, sweep):
    committed = dispatch.load_calibration((9, 0), device.name)
    assert sweep["calibration"]["device"] == device.name
    for key in ("forward", "forward_gptj", "pdl_max_pairs", "l2_keep_max_bytes"):
        assert committed[key] == sweep["calibration"][key], key


def test_the_h200_reads_its_own_file():
    assert dispatch.load_calibration((9, 0), H200.name) != dispatch.load_calibration((9, 0), H100.name)
    assert dispatch.load_calibration((9, 0), H100.name) == dispatch.load_calibration((9, 0))


def test_auto_issues_the_best_forced_launch_at_every_point(device, sweep):
    # 2 styles x 4 head_dim classes x 10 token counts, and neox x 3 partial-rotary classes x 10; on the H100
    # also T = 32 and 64 for the tuned classes (64, 128, 256) x 2 styles, added in session 35
    assert len(sweep["sweep"]) == (122 if device == H100 else 110)
    assert {row["style"] for row in sweep["sweep"]} == {"neox", "gptj"}
    for row in sweep["sweep"]:
        hq, hk, d = row["heads"]
        pairs = row["T"] * (hq + hk)
        times = row["times_us"]  # by choice: "N", or "Np" on the persistent grid (tuned classes)
        assert set(times) >= {"1", "2", "4", "8", "16"}, row
        # The winner is the fastest up to the calibration's tie: stored per row on the device's clock (2%); for
        # rows timed by wall clock 1%, or 20% at launch-bound sizes (T <= 128), where single timings varied by
        # +-20% (benchmarks/calibrate.py: DEVICE_TIE, TIE, SMALL_TIE).
        tie = row.get("tie") or (0.20 if row["T"] <= 128 else 0.01)
        best = str(row["best"])  # an int in rows carried from sweeps before the persistent choices
        assert times[best] <= min(times.values()) * (1 + tie), row
        rotary = row.get("rotary_dim", d)
        auto = dispatch.forward_launch(pairs, d, None, device, 2, row["style"], rotary)
        with dispatch.override_choice(best):
            assert auto == dispatch.forward_launch(pairs, d, None, device, 2, row["style"], rotary), row
        assert auto.pairs_per_warp == row["auto_n"], row  # what the calibration run itself checked


@pytest.mark.parametrize("pairs", [40, 40 * 1024, 40 * 16384])
def test_partial_rotary_neox_reads_its_kernels_table(pairs):
    """neox with rotary_dim < head_dim runs the tuned forward's partial layout where the rotary half is whole
    16-byte chunks (rotary_dim 64 or 16 of 128 in bf16, 8 in f32) and reads its class ("128r"); otherwise the
    generic kernels and theirs (rotary_dim 40 or 8 in bf16: halves of 20 and 4 elements). gptj keeps the
    tuned kernel and its table at any rotary_dim."""
    tables = {style: dispatch.forward_tables(dispatch.load_calibration((9, 0)), style) for style in ("neox", "gptj")}
    expect = {
        ("neox", 128, 2): "128", ("neox", 64, 2): "128r", ("neox", 16, 2): "128r", ("neox", 8, 4): "128r",
        ("neox", 40, 2): "generic", ("neox", 8, 2): "generic", ("gptj", 128, 2): "128", ("gptj", 40, 2): "128",
    }
    for (style, rotary, itemsize), cls in expect.items():
        assert dispatch.forward_class(128, style, rotary, itemsize) == cls, (style, rotary, itemsize)
        table = dispatch.forward_thresholds(tables[style], cls, None)
        launch = dispatch.forward_launch(pairs, 128, None, H100, itemsize, style, rotary)
        assert launch.pairs_per_warp == dispatch.pick_from_thresholds(table, pairs), (style, rotary, itemsize)


def test_partial_class_falls_back_to_its_full_rotary_table():
    """A calibration file without a partial-rotary class (other architectures' files, older ones) gives its
    problems the full-rotary class's thresholds, never the defaults."""
    tables = {"128": [[None, 8]], "generic": [[None, 16]]}
    assert dispatch.forward_thresholds(tables, "128r", None) == [[None, 8]]
    assert dispatch.forward_thresholds({**tables, "128r": [[None, 4]]}, "128r", None) == [[None, 4]]


def test_l2_limit_is_the_measured_cut_off(device, sweep):
    """l2_keep_max_bytes is what benchmarks/calibrate.py derives from the policy's off/on timings (kept with the
    sweep that measured them), and the policy is on wherever it measured faster below it."""
    sys.path.insert(0, str(RESULTS.parent))
    try:
        from calibrate import l2_limit_from
    finally:
        sys.path.remove(str(RESULTS.parent))
    rows = sweep["l2_policy"]
    assert len(rows) == 32
    limit = dispatch.load_calibration((9, 0), device.name)["l2_keep_max_bytes"]
    assert l2_limit_from(rows) == limit
    faster_within = [r for r in rows if r["output_bytes"] <= limit and r["on_us"] < r["off_us"]]
    assert len(faster_within) >= 0.9 * len([r for r in rows if r["output_bytes"] <= limit])
    assert l2_limit_from([dict(output_bytes=8, on_us=2.0, off_us=1.0)]) == 0  # never on where it only loses
    win_then_lose = [dict(output_bytes=8, on_us=1.0, off_us=2.0), dict(output_bytes=32, on_us=2.0, off_us=1.0)]
    assert l2_limit_from(win_then_lose) == 16  # the geometric mean of the last win and the first loss


def test_a_device_models_own_calibration_comes_before_its_architectures(tmp_path, monkeypatch):
    """sm90_<model>.json, where it exists, serves that model only; other models of the architecture, and
    that model without its file, read sm90.json."""
    monkeypatch.setattr(dispatch, "CALIBRATION_DIR", tmp_path)
    dispatch.load_calibration.cache_clear()
    try:
        shared = {"forward": {"128": [[0, 1]]}, "l2_keep_max_bytes": 1}
        (tmp_path / "sm90.json").write_text(json.dumps(shared))
        assert dispatch.load_calibration((9, 0), "NVIDIA H200") == shared
        own = {"forward": {"128": [[0, 16]]}, "l2_keep_max_bytes": 2}
        assert dispatch.calibration_path((9, 0), "NVIDIA H200") == tmp_path / "sm90_nvidia_h200.json"
        dispatch.calibration_path((9, 0), "NVIDIA H200").write_text(json.dumps(own))
        dispatch.load_calibration.cache_clear()
        assert dispatch.load_calibration((9, 0), "NVIDIA H200") == own
        assert dispatch.load_calibration((9, 0), H100.name) == shared
        assert dispatch.load_calibration((9, 0)) == shared
        h200 = dispatch.DeviceFacts((9, 0), 132, "NVIDIA H200")
        assert dispatch.forward_launch(40, 128, None, h200, 2).pairs_per_warp == 16
        assert dispatch.forward_launch(40, 128, None, H100, 2).pairs_per_warp == 1
    finally:
        dispatch.load_calibration.cache_clear()


SHARED_ROWS_CHOICE = {"64": 16, "128": 8, "256": 4}  # bf16: the builds with two pairs per lane group


def test_auto_shares_rows_where_the_h200_calibration_says():
    """From the H200 calibration's shared_rows_min_bytes, auto's launch asks for cos/sin rows in shared memory
    (the C++ side takes them where the build has them: SHARED_ROWS_CHOICE at full rotary), and its N is the
    fastest measured there: the sweep timed every forced N under the same switch, so its rows from that size
    on are times of the shared-rows kernels."""
    calibration = dispatch.load_calibration((9, 0), H200.name)
    assert calibration["shared_rows_min_bytes"] == 32 << 20
    shared = 0
    for row in json.loads(H200_SWEEP.read_text())["sweep"]:
        cls = row["head_dim_class"]
        hq, hk, d = row["heads"]
        pairs = row["T"] * (hq + hk)
        on = dispatch.shared_rows_for(pairs * d * 2, calibration)
        auto = dispatch.forward_launch(pairs, d, None, H200, 2, row["style"], row.get("rotary_dim", d))
        assert auto.shared_rows == on, row
        times = row["times_us"]
        choice = f"{auto.pairs_per_warp}{'p' if auto.persistent else ''}"
        assert times[choice] <= min(times.values()) * (1 + row["tie"]), (cls, row["T"], choice, times)
        shared += on and SHARED_ROWS_CHOICE.get(cls) == auto.pairs_per_warp and not auto.persistent
    assert shared > 0  # points where auto runs a shared-rows kernel
