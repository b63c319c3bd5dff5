"""What reaches XLA: the CUDA custom call and its dispatch attributes (lowered here without a GPU), the
backward's partials, and the FFI version check."""

from __future__ import annotations

import dataclasses
import math
import re

import jax
import jax.numpy as jnp
import pytest

import jax_qkrope as qkr
from jax_qkrope import _extension, dispatch

H100 = dispatch.DeviceFacts((9, 0), 132, "H100")
needs_cuda_build = pytest.mark.skipif(not qkr.HAS_CUDA_KERNELS, reason="built without a CUDA compiler")


def cuda_text(fn, *args) -> str:
    return jax.jit(fn).trace(*args).lower(lowering_platforms=("cuda",)).as_text()


def attribute(text: str, target: str, name: str) -> str:
    call = re.search(rf"stablehlo.custom_call @{target}\(.*", text)
    assert call, f"no custom call to {target}"
    value = re.search(rf"\b{name} = ([^,}}]+)", call.group(0))
    assert value, f"{name} missing from {call.group(0)}"
    return value.group(1).strip()


@needs_cuda_build
@pytest.mark.parametrize(("tokens", "hq", "hk", "d"), [(1, 32, 8, 128), (1024, 32, 8, 128), (65536, 16, 2, 256),
                                                       (300, 16, 16, 64), (50, 8, 8, 80)])
@pytest.mark.parametrize("facts", [H100, dispatch.UNKNOWN_GPU], ids=["sm90", "unknown"])
def test_cuda_lowering_carries_dispatch_attributes(tokens, hq, hk, d, facts):
    q = jax.ShapeDtypeStruct((tokens, hq, d), jnp.bfloat16)
    k = jax.ShapeDtypeStruct((tokens, hk, d), jnp.bfloat16)
    p = jax.ShapeDtypeStruct((tokens,), jnp.int32)
    with dispatch.assume_device(facts):
        text = cuda_text(lambda q, k, p: qkr.fused(q, k, p), q, k, p)
    expected = dispatch.forward_launch(tokens * (hq + hk), d, None, facts, 2)
    assert attribute(text, "qkrope_fwd", "pairs_per_warp") == f"{expected.pairs_per_warp} : i64"
    assert attribute(text, "qkrope_fwd", "warps_per_block") == f"{expected.warps_per_block} : i64"
    assert attribute(text, "qkrope_fwd", "single_warps_per_block") == f"{expected.single_warps_per_block} : i64"
    assert attribute(text, "qkrope_fwd", "rotary_dim") == f"{d} : i64"
    assert attribute(text, "qkrope_fwd", "prefetch_pairs") == f"{expected.prefetch_pairs} : i64"
    assert attribute(text, "qkrope_fwd", "persistent") == str(expected.persistent).lower()
    assert attribute(text, "qkrope_fwd", "l2_policy") == f"{expected.l2_policy} : i64"
    assert attribute(text, "qkrope_fwd", "shared_rows") == str(expected.shared_rows).lower()
    if facts is dispatch.UNKNOWN_GPU:  # the conservative default table
        assert expected.pairs_per_warp == dispatch.pick_from_thresholds(
            dispatch.DEFAULT_FORWARD_THRESHOLDS, tokens * (hq + hk))
        assert attribute(text, "qkrope_fwd", "pdl") == "false"


def test_persistent_forward_comes_from_the_calibration_on_known_devices_only():
    launch = lambda facts, forced=None: dispatch.forward_launch(4096 * 32, 64, forced, facts, 2)  # noqa: E731
    table = dispatch.forward_tables(dispatch.load_calibration((9, 0)), "neox")["64"]
    assert launch(H100).persistent == dispatch.pick_variant(table, 4096 * 32)[1]
    assert launch(H100, forced=8).persistent is False  # a user's N runs the plain grid
    assert launch(dispatch.UNKNOWN_GPU).persistent is False
    with dispatch.override_choice("16p"):
        assert (launch(H100).pairs_per_warp, launch(H100).persistent) == (16, True)
    with pytest.raises(ValueError, match="forward choice"):
        dispatch.parse_choice("3p")
    for enabled in (False, True):
        with dispatch.override_persistent(enabled):
            assert launch(H100).persistent == enabled
            assert launch(dispatch.UNKNOWN_GPU).persistent is False
            assert launch(H100).ffi_attributes()["persistent"] is enabled


def test_l2_policy_keeps_outputs_up_to_the_calibrated_size():
    """keep_outputs where the output is at most the calibration's l2_keep_max_bytes; plain accesses past it,
    on unknown devices, and where a calibration file has no such entry. An override wins."""
    keep, plain = dispatch.L2_POLICIES["keep_outputs"], dispatch.L2_POLICIES["default"]
    assert dispatch.l2_policy_for(1, {"l2_keep_max_bytes": 100}) == keep
    assert dispatch.l2_policy_for(100, {"l2_keep_max_bytes": 100}) == keep
    assert dispatch.l2_policy_for(101, {"l2_keep_max_bytes": 100}) == plain
    assert dispatch.l2_policy_for(1, {}) == plain
    assert dispatch.l2_policy_for(1, None) == plain
    limit = dispatch.load_calibration((9, 0))["l2_keep_max_bytes"]
    tokens_within = limit // (40 * 128 * 2)  # (32, 8, 128) bf16 heads: 10 KiB of output per token
    launch = lambda tokens, facts=H100: dispatch.forward_launch(tokens * 40, 128, None, facts, 2)  # noqa: E731
    assert launch(tokens_within).l2_policy == keep
    assert launch(tokens_within + 1).l2_policy == plain
    assert launch(tokens_within, dispatch.UNKNOWN_GPU).l2_policy == plain
    with dispatch.override_l2_policy(plain):
        assert launch(tokens_within).ffi_attributes()["l2_policy"] == plain
    with dispatch.override_l2_policy(keep):
        assert launch(tokens_within + 1).l2_policy == keep
    with pytest.raises(ValueError, match="l2_policy"):
        dispatch.override_l2_policy(7)


def test_shared_rows_from_the_calibrated_size_on_calibrated_devices_only():
    """The tuned forward's cos/sin rows go through shared memory from the calibration's shared_rows_min_bytes
    of q and k on; never without the entry (the H100's file), on unknown devices, or below it. An override
    wins on known devices."""
    assert dispatch.shared_rows_for(100, {"shared_rows_min_bytes": 100})
    assert not dispatch.shared_rows_for(99, {"shared_rows_min_bytes": 100})
    assert not dispatch.shared_rows_for(10**12, {"shared_rows_min_bytes": 0})
    assert not dispatch.shared_rows_for(10**12, {})
    assert not dispatch.shared_rows_for(10**12, None)
    h200 = dispatch.DeviceFacts((9, 0), 132, "NVIDIA H200")
    limit = dispatch.load_calibration((9, 0), h200.name)["shared_rows_min_bytes"]
    tokens_from = -(-limit // (40 * 128 * 2))  # (32, 8, 128) bf16: 10 KiB of q and k per token
    launch = lambda tokens, facts=h200: dispatch.forward_launch(tokens * 40, 128, None, facts, 2)  # noqa: E731
    assert launch(tokens_from).shared_rows
    assert not launch(tokens_from - 1).shared_rows
    assert not launch(65536, H100).shared_rows  # no entry in the H100's calibration
    assert not launch(65536, dispatch.UNKNOWN_GPU).shared_rows
    with dispatch.override_shared_rows(False):
        assert launch(tokens_from).ffi_attributes()["shared_rows"] is False
    with dispatch.override_shared_rows(True):
        assert launch(1, H100).shared_rows
        assert not launch(1, dispatch.UNKNOWN_GPU).shared_rows


def test_forward_block_size_override_reaches_the_launch_and_is_bounded():
    launch = lambda: dispatch.forward_launch(4096 * 40, 128, None, H100, 2)  # noqa: E731
    assert launch().warps_per_block == dispatch.FORWARD_WARPS_PER_BLOCK
    for warps in (1, 2, 8):
        with dispatch.override_forward_warps_per_block(warps):
            assert launch().ffi_attributes()["warps_per_block"] == warps
    assert launch().warps_per_block == dispatch.FORWARD_WARPS_PER_BLOCK
    for bad in (0, 9):
        with pytest.raises(ValueError, match="warps_per_block"):
            dispatch.override_forward_warps_per_block(bad)


def test_single_pair_launches_take_their_own_block_size():
    # Every forward launch carries both block sizes; the C++ launcher uses single_warps_per_block where it runs
    # the single-pair kernel (which only it can decide: it sees the inputs' dtypes) and warps_per_block elsewhere.
    for forced, head_dim, rotary in ((None, 128, None), (2, 128, None), (1, 128, 64), (1, 80, None)):
        launch = dispatch.forward_launch(40, head_dim, forced, H100, 2, rotary_dim=rotary)
        assert launch.warps_per_block == dispatch.FORWARD_WARPS_PER_BLOCK == 4
        assert launch.ffi_attributes()["single_warps_per_block"] == dispatch.SINGLE_PAIR_WARPS_PER_BLOCK == 8
    # From N = 4 on, the single-pair kernel keeps the tuned kernel's block size.
    for forced in (4, 8, 16):
        launch = dispatch.forward_launch(40, 128, forced, H100, 2)
        assert launch.single_warps_per_block == dispatch.SINGLE_PAIR_WARPS_PER_BLOCK_WIDE == launch.warps_per_block == 4
    assert dispatch.forward_launch(40, 128, None, dispatch.UNKNOWN_GPU, 2).single_warps_per_block == 8
    # The shared override sets both; the single-pair one wins there and reaches past the other kernels' bound.
    with dispatch.override_forward_warps_per_block(2):
        both = dispatch.forward_launch(40, 128, None, H100, 2)
        assert (both.warps_per_block, both.single_warps_per_block) == (2, 2)
        for warps in (1, 9, dispatch.MAX_SINGLE_WARPS_PER_BLOCK):
            with dispatch.override_single_warps_per_block(warps):
                launch = dispatch.forward_launch(40, 128, None, H100, 2)
                assert (launch.warps_per_block, launch.ffi_attributes()["single_warps_per_block"]) == (2, warps)
    for bad in (0, dispatch.MAX_SINGLE_WARPS_PER_BLOCK + 1):
        with pytest.raises(ValueError, match="single_warps_per_block"):
            dispatch.override_single_warps_per_block(bad)


@pytest.mark.parametrize(("field", "value"), [("warps_per_block", 9), ("single_warps_per_block", 0),
                                            ("single_warps_per_block", dispatch.MAX_SINGLE_WARPS_PER_BLOCK + 1)])
def test_handlers_reject_block_sizes_past_the_kernels_bounds(monkeypatch, field, value):
    # decode.cc checks the launch attributes again (every target reads them, the CPU's included): a block size
    # past a kernel's launch bounds fails naming the attribute instead of launching.
    launch = dataclasses.replace(dispatch.forward_launch(4 * 10, 64, None, H100, 2), **{field: value})
    monkeypatch.setattr(dispatch, "forward_launch", lambda *args, **kwargs: launch)
    q, k = jnp.ones((4, 8, 64), jnp.bfloat16), jnp.ones((4, 2, 64), jnp.bfloat16)
    with pytest.raises(jax.errors.JaxRuntimeError, match=re.escape(f"{field} must be in [1, ")):
        jax.block_until_ready(jax.jit(lambda q, k, p: qkr.fused(q, k, p))(q, k, jnp.arange(4, dtype=jnp.int32)))


def test_prefetch_distance_is_a_wave_of_head_bytes_ahead():
    # 132 SMs x 40 KiB of 256-byte heads; off when no pair lies that far ahead or the device is unknown.
    assert dispatch.prefetch_distance(65536 * 40, 128, 2, H100) == 132 * 40 * 1024 // 256
    assert dispatch.prefetch_distance(65536 * 40, 64, 4, H100) == 132 * 40 * 1024 // 256
    assert dispatch.prefetch_distance(1024 * 40, 256, 2, H100) == 132 * 40 * 1024 // 512
    assert dispatch.prefetch_distance(16 * 40, 128, 2, H100) == 0
    assert dispatch.prefetch_distance(65536 * 40, 128, 2, dispatch.UNKNOWN_GPU) == 0
    with dispatch.override_prefetch(5):
        assert dispatch.prefetch_distance(16, 128, 2, dispatch.UNKNOWN_GPU) == 5


@needs_cuda_build
@pytest.mark.parametrize("forced", [1, 2, 4, 8])
def test_forced_pairs_per_warp_is_honoured(forced):
    q = jax.ShapeDtypeStruct((4096, 32, 128), jnp.bfloat16)
    k = jax.ShapeDtypeStruct((4096, 8, 128), jnp.bfloat16)
    p = jax.ShapeDtypeStruct((4096,), jnp.int32)
    with dispatch.assume_device(H100):
        text = cuda_text(lambda q, k, p: qkr.fused(q, k, p, token_heads_per_warp=forced), q, k, p)
    assert attribute(text, "qkrope_fwd", "pairs_per_warp") == f"{forced} : i64"


@needs_cuda_build
def test_auto_choice_of_16_pairs_and_forced_n_wins():
    q = jax.ShapeDtypeStruct((65536, 32, 128), jnp.bfloat16)
    k = jax.ShapeDtypeStruct((65536, 8, 128), jnp.bfloat16)
    p = jax.ShapeDtypeStruct((65536,), jnp.int32)
    with dispatch.assume_device(H100), dispatch.override_choice(16):
        text = cuda_text(lambda q, k, p: qkr.fused(q, k, p), q, k, p)
    assert attribute(text, "qkrope_fwd", "pairs_per_warp") == "16 : i64"
    with dispatch.assume_device(H100), dispatch.override_choice(16):
        text = cuda_text(lambda q, k, p: qkr.fused(q, k, p, token_heads_per_warp=2), q, k, p)
    assert attribute(text, "qkrope_fwd", "pairs_per_warp") == "2 : i64"  # a forced N wins


@needs_cuda_build
def test_cuda_backward_lowering_has_persistent_partials():
    q = jnp.ones((4096, 32, 128), jnp.bfloat16)
    k = jnp.ones((4096, 8, 128), jnp.bfloat16)
    w = jnp.ones((128,), jnp.bfloat16)
    p = jnp.arange(4096, dtype=jnp.int32)
    g = jax.grad(lambda q, w: jnp.sum(qkr.fused(q, k, p, w, w)[0].astype(jnp.float32)), argnums=(0, 1))
    with dispatch.assume_device(H100):
        text = cuda_text(g, q, w)
    _, blocks = dispatch.backward_launch(4096 * 40, 128, 1, H100, "cuda")
    assert blocks == dispatch.BACKWARD_LAUNCH[128][2] * 132
    assert re.search(rf"stablehlo.custom_call @qkrope_bwd\(.*tensor<1x{blocks}x2x128xf32>", text)


@pytest.mark.parametrize(("head_dim", "grid"), [(64, (8, 8, 2)), (128, (4, 4, 4)), (256, (2, 8, 2)), (80, (8, 4, 4))])
def test_backward_launch_shape_per_head_dim(head_dim, grid):
    """The persistent backward grid the H100 sweep chose per head_dim (results/run9_backward), split evenly
    over the examples, never more blocks than the pairs need, and one block on the CPU."""
    pairs, warps, blocks_per_sm = grid
    launch, blocks = dispatch.backward_launch(65536 * 32, head_dim, 2, H100, "cuda")
    assert (launch.pairs_per_warp, launch.warps_per_block, blocks) == (pairs, warps, blocks_per_sm * 132 // 2)
    _, few = dispatch.backward_launch(96, head_dim, 1, H100, "cuda")
    assert few == math.ceil(96 / pairs / warps)  # only the blocks 96 pairs need
    assert dispatch.backward_launch(65536 * 32, head_dim, 1, H100, "cpu")[1] == 1


def test_backward_launch_follows_the_kernel_of_partial_rotary():
    """Partial-rotary neox runs the tuned backward, and takes its grid, where the rotary half is whole 16-byte
    words (tuned_partial_neox: rotary 64 in bf16, 40 in float32); elsewhere (rotary 40 in bf16) the generic
    backward and its grid. gptj runs the tuned kernel at any rotary_dim."""
    def launch(style, rotary, itemsize=2):
        return dispatch.backward_launch(65536 * 40, 128, 1, H100, "cuda", style, rotary, itemsize)[0]

    tuned = dispatch.BACKWARD_LAUNCH[128][:2]
    for style, rotary, itemsize in (("neox", 128, 2), ("neox", 64, 2), ("neox", 40, 4), ("gptj", 40, 2)):
        assert dispatch.backward_class(128, style, rotary, itemsize) == "128", (style, rotary, itemsize)
        chosen = launch(style, rotary, itemsize)
        assert (chosen.pairs_per_warp, chosen.warps_per_block) == tuned, (style, rotary, itemsize)
    assert dispatch.backward_class(128, "neox", 40, 2) == "generic"
    generic = launch("neox", 40)
    assert (generic.pairs_per_warp, generic.warps_per_block) == dispatch.BACKWARD_GENERIC_NARROW_LAUNCH[:2]
    assert dispatch.backward_class(96, "neox", 64, 2) == "generic"


@pytest.mark.parametrize(
    ("head_dim", "style", "rotary", "itemsize", "wide"),
    [
        (80, "neox", None, 2, True),  # partners in one lane
        (96, "neox", 64, 2, True),  # partial rotary, the half whole chunks
        (72, "gptj", None, 2, True),
        (72, "neox", None, 2, False),  # half of 72 is not whole 8-element chunks: exchanged in shared memory
        (128, "neox", 72, 2, False),
        (90, "gptj", None, 2, False),  # 2-element chunks
        (72, "neox", None, 4, True),  # float32: 4-element chunks
        (90, "gptj", None, 4, False),
    ],
)
def test_generic_backward_grid_follows_its_registers(head_dim, style, rotary, itemsize, wide):
    """Four 4-warp blocks per SM only for the generic backward built for 128 registers (16-byte chunks,
    neox partners in one lane); the others take more and get two, so the persistent grid is one wave."""
    assert dispatch.generic_backward_is_wide(head_dim, style, rotary, itemsize) == wide
    launch, blocks = dispatch.backward_launch(65536 * 40, head_dim, 1, H100, "cuda", style, rotary, itemsize)
    expected = dispatch.BACKWARD_GENERIC_LAUNCH if wide else dispatch.BACKWARD_GENERIC_NARROW_LAUNCH
    assert (launch.pairs_per_warp, launch.warps_per_block, blocks) == (*expected[:2], expected[2] * 132)


def test_cpu_lowering_uses_the_cpu_target():
    text = jax.jit(qkr.fused).lower(jnp.ones((3, 4, 64)), jnp.ones((3, 4, 64)), jnp.arange(3)).as_text()
    assert "stablehlo.custom_call @qkrope_fwd" in text


def test_ffi_version_check():
    major, minor = _extension.COMPILED_FFI_API_VERSION
    _extension.check_ffi_version((major, minor), (major, minor))
    _extension.check_ffi_version((major, minor), (major, minor + 1))  # an older build on a newer runtime
    _extension.check_ffi_version((major, minor), None)  # headers not shipped: XLA itself checks
    with pytest.raises(ImportError, match="built against XLA FFI API"):
        _extension.check_ffi_version((major, minor + 1), (major, minor))
    with pytest.raises(ImportError, match="built against XLA FFI API"):
        _extension.check_ffi_version((major + 1, 0), (major, minor))
    assert _extension.runtime_ffi_api_version() >= _extension.COMPILED_FFI_API_VERSION
