"""The RoIPool plugin kernel: PTX builds on any machine (NVRTC, nvcc fallback); exact parity with
``torchvision.ops.roi_pool`` on a GPU (marker ``gpu``: ``pytest tests/engines/test_plugin_kernel.py -m gpu``).

Glossary: N images, C channels, H x W feature map, R RoIs, PH x PW pooled shape.
"""

from __future__ import annotations

import importlib.resources
import math
import pathlib
import re
import shutil
import struct
import subprocess
from typing import Any

import pytest
import torch
import torchvision

from frcnn_trt.engines.tensorrt import kernel as K
from frcnn_trt.engines.tensorrt.cuda_launch import run_roi_pool_cuda
from frcnn_trt.errors import BackendError, ModelError

ALL_DTYPES = [("float32", "float32"), ("float16", "float32"), ("float16", "float16")]
# VGG16/ZF pool5 at stride 16; a non-square pooled shape with a scale that float32 rounds (1/12).
CASES = [((7, 7), 1 / 16), ((6, 4), 1 / 12)]
NEG_FLT_MAX = -torch.finfo(torch.float32).max

requires_gpu = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA GPU")


def _f32_bits(value: float) -> int:
    return struct.unpack("<I", struct.pack("<f", value))[0]


def _ptx_const(value: float) -> str:
    return f"0f{_f32_bits(value):08X}"


def _defines(source: str) -> dict[str, str]:
    return dict(re.findall(r"^#define (FRCNN_\w+) (\S+)", source, flags=re.MULTILINE))


@pytest.fixture(scope="module")
def compiler() -> str:
    """The compiler `auto` would use here; skip (with the reason) where neither can be found."""
    try:
        K.nvrtc_version()
        return "nvrtc"
    except BackendError as exc:
        if shutil.which("nvcc"):
            return "nvcc"
        pytest.skip(f"no CUDA compiler: {exc}")


# ----------------------------------------------------------------------------------------------
# CPU: source, constants, PTX


def test_source_is_package_data() -> None:
    text = importlib.resources.files("frcnn_trt.engines.tensorrt").joinpath("roi_pool.cu").read_text()
    for entry in K.ENTRY_NAMES:
        assert f'extern "C" __global__ void {entry}(' in text


@pytest.mark.parametrize(
    ("value", "literal"),
    [(1 / 16, "6.25000000e-02f"), (1.0, "1.00000000e+00f"), (0.5, "5.00000000e-01f"), (1 / 12, None)],
)
def test_float32_literal_is_exact(value: float, literal: str | None) -> None:
    text = K.float32_literal(value)
    if literal is not None:
        assert text == literal
    assert text.endswith("f") and "e" in text and "." in text  # always a valid C float literal
    assert _f32_bits(float(text[:-1])) == _f32_bits(value)


@pytest.mark.parametrize(("pooled_shape", "scale"), CASES)
@pytest.mark.parametrize(("dtype", "rois_dtype"), ALL_DTYPES)
def test_kernel_source_bakes_constants(
    pooled_shape: tuple[int, int], scale: float, dtype: str, rois_dtype: str
) -> None:
    source = K.kernel_source(pooled_shape, scale, dtype, rois_dtype)
    defines = _defines(source)
    assert int(defines["FRCNN_POOLED_H"]) == pooled_shape[0]
    assert int(defines["FRCNN_POOLED_W"]) == pooled_shape[1]
    literal = defines["FRCNN_SPATIAL_SCALE"].strip("()")
    assert _f32_bits(float(literal.rstrip("f"))) == _f32_bits(scale)
    entry_macros = {k for k in defines if k.startswith("FRCNN_ROI_POOL_")}
    assert entry_macros == {
        {"roi_pool_fwd_f32": "FRCNN_ROI_POOL_F32", "roi_pool_fwd_f16": "FRCNN_ROI_POOL_F16"}.get(
            K.kernel_name(dtype, rois_dtype), "FRCNN_ROI_POOL_F16_F16ROIS"
        )
    }
    assert '#line 1 "roi_pool.cu"' in source


def test_kernel_name() -> None:
    assert K.kernel_name() == "roi_pool_fwd_f32"
    assert K.kernel_name(torch.float16) == "roi_pool_fwd_f16"
    assert K.kernel_name("fp16", "half") == "roi_pool_fwd_f16_f16rois"
    with pytest.raises(ModelError, match="features float32 with rois float16"):
        K.kernel_name("float32", "float16")
    with pytest.raises(ModelError, match="int8"):
        K.kernel_name("int8")


@pytest.mark.parametrize("pooled_shape", [(0, 7), (7,), (7, 7, 7), (7.0, 7), (True, 7), (-1, 3), 7, "77"])
def test_bad_pooled_shape(pooled_shape: Any) -> None:
    with pytest.raises(ModelError, match="pooled_shape"):
        K.kernel_source(pooled_shape, 1 / 16)


@pytest.mark.parametrize("scale", [0.0, -1 / 16, math.nan, math.inf, 1e39, 1e-50])
def test_bad_spatial_scale(scale: float) -> None:
    with pytest.raises(ModelError, match="spatial_scale"):
        K.compile_ptx((7, 7), scale)


def test_bad_arch_and_compiler_names() -> None:
    with pytest.raises(ModelError, match="virtual architecture"):
        K.compile_ptx((7, 7), 1 / 16, arch="sm_75")
    with pytest.raises(ModelError, match="compiler"):
        K.compile_source_to_ptx("", compiler="clang")  # type: ignore[arg-type]


@pytest.mark.parametrize(("pooled_shape", "scale"), CASES)
@pytest.mark.parametrize(("dtype", "rois_dtype"), ALL_DTYPES)
def test_compile_ptx(
    compiler: str, pooled_shape: tuple[int, int], scale: float, dtype: str, rois_dtype: str
) -> None:
    ptx = K.compile_ptx(pooled_shape, scale, dtype, rois_dtype)
    entry = K.kernel_name(dtype, rois_dtype)
    assert K.ptx_entries(ptx) == [entry]
    assert re.search(r"^\.target sm_75\b", ptx, flags=re.MULTILINE)
    assert _ptx_const(scale) in ptx  # the baked spatial scale, bit-exact
    # TensorRT AOT parameter order: 2 input pointers, 5 int32 extra args (N, C, H, W, R), 1 output.
    params = re.findall(rf"\.param \.(\w+) {entry}_param_(\d+)", ptx)
    assert [t for t, _ in params] == ["u64", "u64", "u32", "u32", "u32", "u32", "u32", "u64"]
    assert [int(i) for _, i in params] == list(range(8))
    if dtype == "float16":  # half is converted with PTX cvt, both ways
        assert "cvt.f32.f16" in ptx and "cvt.rn.f16.f32" in ptx
    else:
        assert "cvt.f32.f16" not in ptx and "cvt.rn.f16.f32" not in ptx
    assert K.compile_ptx(pooled_shape, scale, dtype, rois_dtype) is ptx  # cached


def test_ptx_isa_rewrite(compiler: str) -> None:
    ptx = K.compile_ptx((7, 7), 1 / 16)
    old = K.compile_ptx((7, 7), 1 / 16, ptx_isa=(7, 0))
    assert K.ptx_isa_version(old) == (7, 0)
    assert old.replace(".version 7.0", "") == re.sub(r"\.version \d+\.\d+", "", ptx, count=1)
    with pytest.raises(ModelError, match="ptx_isa"):
        K.compile_ptx((7, 7), 1 / 16, ptx_isa=(99, 0))
    with pytest.raises(ModelError, match="ptx_isa"):
        K.compile_ptx((7, 7), 1 / 16, ptx_isa=(6, 0))


@pytest.mark.skipif(shutil.which("ptxas") is None, reason="ptxas not on PATH")
@pytest.mark.parametrize(("dtype", "rois_dtype"), ALL_DTYPES)
def test_ptx_assembles_for_turing_to_blackwell(
    compiler: str, dtype: str, rois_dtype: str, tmp_path: pathlib.Path
) -> None:
    """ptxas (what the driver's JIT runs) accepts the PTX declared as ISA 7.0 for sm_75 … sm_120."""
    path = tmp_path / "roi_pool.ptx"
    path.write_text(K.compile_ptx((7, 7), 1 / 16, dtype, rois_dtype, ptx_isa=(7, 0)))
    for sm in ("sm_75", "sm_90", "sm_120"):
        proc = subprocess.run(
            ["ptxas", f"-arch={sm}", str(path), "-o", str(tmp_path / f"{sm}.cubin")],
            capture_output=True,
            text=True,
            check=False,
        )
        assert proc.returncode == 0, f"ptxas -arch={sm}: {proc.stderr}"


def test_compile_error_is_backend_error(compiler: str) -> None:
    with pytest.raises(BackendError, match="frcnn_undefined_symbol"):
        K.compile_source_to_ptx('extern "C" __global__ void k() { frcnn_undefined_symbol(); }')
    # roi_pool.cu refuses to build without the baked constants.
    raw = importlib.resources.files("frcnn_trt.engines.tensorrt").joinpath("roi_pool.cu").read_text()
    with pytest.raises(BackendError, match="FRCNN_POOLED_H"):
        K.compile_source_to_ptx(raw)


def test_unknown_arch_is_backend_error(compiler: str) -> None:
    with pytest.raises(BackendError, match="compute_10"):
        K.compile_source_to_ptx(K.kernel_source((7, 7), 1 / 16), arch="compute_10")


def test_missing_compiler_names_what_was_searched(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(K, "_NVRTC_MODULE", "cuda.bindings.frcnn_no_such_nvrtc")
    monkeypatch.setattr(K, "_NVCC", "frcnn-no-such-nvcc")
    source = K.kernel_source((7, 7), 1 / 16)
    with pytest.raises(BackendError) as info:
        K.compile_source_to_ptx(source)
    message = str(info.value)
    for searched in (
        "cuda.bindings.frcnn_no_such_nvrtc",
        "cuda-bindings",
        "cuda-pathfinder",
        "frcnn-no-such-nvcc",
    ):
        assert searched in message
    with pytest.raises(BackendError, match="NVRTC is not available"):
        K.nvrtc_version()
    with pytest.raises(BackendError, match="frcnn-no-such-nvcc"):
        K.compile_source_to_ptx(source, compiler="nvcc")


@pytest.mark.skipif(shutil.which("nvcc") is None, reason="nvcc not on PATH")
def test_nvcc_fallback(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(K, "_NVRTC_MODULE", "cuda.bindings.frcnn_no_such_nvrtc")
    ptx = K.compile_source_to_ptx(K.kernel_source((6, 4), 1 / 12, "float16"))
    assert K.ptx_entries(ptx) == ["roi_pool_fwd_f16"]
    assert _ptx_const(1 / 12) in ptx


@pytest.mark.parametrize(
    ("num_outputs", "grid"), [(0, 1), (1, 1), (256, 1), (257, 2), (300 * 512 * 49, 29400)]
)
def test_launch_config(num_outputs: int, grid: int) -> None:
    assert K.launch_config(num_outputs) == K.LaunchConfig(grid_x=grid, block_x=256)
    with pytest.raises(ModelError):
        K.launch_config(-1)


def test_run_rejects_cpu_tensors() -> None:
    with pytest.raises(ModelError, match="CUDA tensors"):
        run_roi_pool_cuda(torch.zeros(1, 1, 4, 4), torch.zeros(1, 5), (2, 2), 1.0)


def test_torchvision_is_the_reference_semantics() -> None:
    """The GPU tests compare against torchvision.ops.roi_pool; pin that it is docs/REFERENCE.md §8 (Caffe)."""
    feats = -torch.arange(1.0, 17.0).reshape(1, 1, 4, 4)  # max of a bin = its top-left element
    rois = torch.tensor(
        [
            [0.0, 8.0, 8.0, 40.0, 40.0],  # x/16 = 0.5 -> 1 (half away from zero), 2.5 -> 3: size 3
            [0.0, -8.0, -8.0, -8.0, -8.0],  # -0.5 -> -1: 1x1 RoI off the map, every bin empty -> 0
            [0.0, 100.0, 100.0, 200.0, 200.0],  # beyond the map: every bin empty -> 0
        ]
    )
    out = torchvision.ops.roi_pool(feats, rois, (2, 2), 1 / 16)
    # RoI 0: bin 1.5 -> rows/cols [1, 3) and [2, 4): top-left elements (1,1) (1,2) (2,1) (2,2).
    assert out[0, 0].tolist() == [[-6.0, -7.0], [-10.0, -11.0]]
    assert out[1:].eq(0).all()  # half-to-even rounding would give -1 for RoI 1


# ----------------------------------------------------------------------------------------------
# GPU: the kernel itself against torchvision.ops.roi_pool, exactly


def _random_rois(gen: torch.Generator, n: int, h: int, w: int, r: int, scale: float) -> torch.Tensor:
    """RoIs in and around an image of (h/scale, w/scale) px: outside, inverted, and on .5 ties."""
    img_w, img_h = w / scale, h / scale
    x1 = torch.rand(r, generator=gen) * 1.5 * img_w - 0.25 * img_w
    y1 = torch.rand(r, generator=gen) * 1.5 * img_h - 0.25 * img_h
    x2 = x1 + torch.rand(r, generator=gen) * 0.9 * img_w - 0.1 * img_w
    y2 = y1 + torch.rand(r, generator=gen) * 0.9 * img_h - 0.1 * img_h
    boxes = torch.stack([x1, y1, x2, y2], dim=1)
    tie = torch.rand(r, 4, generator=gen) < 0.3  # coordinates with x * scale = k + 0.5 exactly
    boxes = torch.where(tie, (torch.floor(boxes * scale) + 0.5) / scale, boxes)
    batch = torch.randint(0, n, (r, 1), generator=gen).float()
    return torch.cat([batch, boxes], dim=1)


def _edge_rois() -> torch.Tensor:
    """Hand-picked RoIs for a [2, C, 10, 12] map at scale 1/16 (a 160 x 192 image)."""
    return torch.tensor(
        [
            [0.0, 0.0, 0.0, 191.0, 159.0],  # the whole image
            [1.0, -100.0, -50.0, 30.0, 40.0],  # negative coordinates, partly on the map
            [0.0, -500.0, -500.0, -300.0, -300.0],  # wholly left/above: zeros
            [1.0, 400.0, 400.0, 900.0, 900.0],  # wholly right/below: zeros
            [0.0, 50.0, 50.0, 50.0, 50.0],  # zero size -> 1x1
            [1.0, 80.0, 80.0, 40.0, 40.0],  # inverted -> 1x1
            [0.0, 8.0, 8.0, 8.0, 8.0],  # 0.5 rounds to 1
            [1.0, -8.0, -8.0, -8.0, -8.0],  # -0.5 rounds to -1: zeros
            [0.0, 191.9, 159.9, 191.9, 159.9],  # last pixel
            [1.0, 0.0, 0.0, 1e4, 1e4],  # far larger than the map
            [0.0, 7.999, 24.0001, 100.5, 33.3],  # fractional, thin
            [1.7, 16.0, 16.0, 120.0, 90.0],  # batch index truncates to 1
        ]
    )


def _reference(
    feats: torch.Tensor,
    rois: torch.Tensor,
    pooled_shape: tuple[int, int],
    scale: float,
    dtype: str,
    rois_dtype: str,
) -> torch.Tensor:
    """torchvision in float32 on the values the kernel sees; in half, -FLT_MAX (all-NaN bin) is -inf."""
    feats = feats.half().float() if dtype == "float16" else feats
    rois = rois.half().float() if rois_dtype == "float16" else rois
    out = torchvision.ops.roi_pool(feats, rois, pooled_shape, scale)
    if dtype == "float16":
        out = torch.where(out == NEG_FLT_MAX, torch.full_like(out, -math.inf), out)
    return out


def _run(
    feats: torch.Tensor,
    rois: torch.Tensor,
    pooled_shape: tuple[int, int],
    scale: float,
    dtype: str,
    rois_dtype: str,
    **kwargs: Any,
) -> torch.Tensor:
    to = {"float32": torch.float32, "float16": torch.float16}
    out = run_roi_pool_cuda(feats.to(to[dtype]), rois.to(to[rois_dtype]), pooled_shape, scale, **kwargs)
    torch.cuda.synchronize()
    assert out.dtype == to[dtype]
    assert out.shape == (rois.shape[0], feats.shape[1], *pooled_shape)
    return out.float()


def _assert_exact(got: torch.Tensor, expected: torch.Tensor) -> None:
    assert not got.isnan().any()
    bad = (got != expected).nonzero().tolist()
    if bad:
        first = tuple(bad[0])
        raise AssertionError(f"{len(bad)} mismatches, first at {first}: {got[first]} vs {expected[first]}")


@pytest.mark.gpu
@requires_gpu
@pytest.mark.parametrize(("pooled_shape", "scale"), [*CASES, ((3, 5), 0.5)])
@pytest.mark.parametrize(("dtype", "rois_dtype"), ALL_DTYPES)
def test_gpu_random_rois(pooled_shape: tuple[int, int], scale: float, dtype: str, rois_dtype: str) -> None:
    gen = torch.Generator().manual_seed(0)
    n, c, h, w, r = 2, 16, 19, 27, 300
    feats = torch.randn(n, c, h, w, generator=gen)
    rois = _random_rois(gen, n, h, w, r, scale)
    feats, rois = feats.cuda(), rois.cuda()
    got = _run(feats, rois, pooled_shape, scale, dtype, rois_dtype)
    _assert_exact(got, _reference(feats, rois, pooled_shape, scale, dtype, rois_dtype))


@pytest.mark.gpu
@requires_gpu
@pytest.mark.parametrize("pooled_shape", [(7, 7), (2, 3)])
@pytest.mark.parametrize(("dtype", "rois_dtype"), ALL_DTYPES)
def test_gpu_edge_cases(pooled_shape: tuple[int, int], dtype: str, rois_dtype: str) -> None:
    gen = torch.Generator().manual_seed(1)
    feats = torch.randn(2, 3, 10, 12, generator=gen)
    feats[torch.rand(feats.shape, generator=gen) < 0.1] = math.nan  # NaNs are skipped, as torchvision does
    feats[0, 0, 0, 0] = math.nan  # a 1x1 bin on a NaN: -FLT_MAX (float32) / -inf (half)
    rois = torch.cat([_edge_rois(), torch.tensor([[0.0, 0.0, 0.0, 0.0, 0.0]])])
    feats, rois = feats.cuda(), rois.cuda()
    got = _run(feats, rois, pooled_shape, 1 / 16, dtype, rois_dtype)
    _assert_exact(got, _reference(feats, rois, pooled_shape, 1 / 16, dtype, rois_dtype))
    assert got[2:4].eq(0).all() and got[7].eq(0).all()  # RoIs off the map
    assert got[-1, 0].eq(-math.inf if dtype == "float16" else NEG_FLT_MAX).all()  # the all-NaN bins


@pytest.mark.gpu
@requires_gpu
def test_gpu_bad_batch_index_gives_zeros() -> None:
    feats = torch.randn(2, 4, 8, 8).cuda()
    rois = torch.tensor([[2.0, 0, 0, 64, 64], [-1.0, 0, 0, 64, 64], [1.0, 0, 0, 64, 64]]).cuda()
    got = _run(feats, rois, (7, 7), 1 / 8, "float32", "float32")
    assert got[:2].eq(0).all()
    _assert_exact(got[2:], torchvision.ops.roi_pool(feats, rois[2:], (7, 7), 1 / 8))


@pytest.mark.gpu
@requires_gpu
def test_gpu_grid_stride_noncontiguous_and_empty() -> None:
    gen = torch.Generator().manual_seed(2)
    feats = torch.randn(2, 20, 23, 8, generator=gen).permute(0, 3, 1, 2).cuda()  # [2, 8, 20, 23], strided
    rois = _random_rois(gen, 2, 20, 23, 64, 1 / 16).cuda()
    expected = torchvision.ops.roi_pool(feats, rois, (7, 7), 1 / 16)
    _assert_exact(_run(feats, rois, (7, 7), 1 / 16, "float32", "float32", max_blocks=3), expected)
    empty = _run(feats, rois[:0], (7, 7), 1 / 16, "float32", "float32")
    assert empty.shape == (0, 8, 7, 7)


@pytest.mark.gpu
@requires_gpu
def test_gpu_native_arch_and_old_ptx_isa() -> None:
    """PTX for the device's own arch, and compute_75 PTX declared as ISA 7.0, both load and agree."""
    major, minor = torch.cuda.get_device_capability()
    gen = torch.Generator().manual_seed(3)
    feats = torch.randn(1, 8, 16, 16, generator=gen).cuda()
    rois = _random_rois(gen, 1, 16, 16, 50, 1 / 16).cuda()
    expected = torchvision.ops.roi_pool(feats, rois, (7, 7), 1 / 16)
    for kwargs in ({"arch": f"compute_{major}{minor}"}, {"ptx_isa": (7, 0)}):
        _assert_exact(_run(feats, rois, (7, 7), 1 / 16, "float32", "float32", **kwargs), expected)
