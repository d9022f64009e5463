"""The RoIPool plugin kernel (roi_pool.cu, as shipped) compiled for the host by g++ and checked against
``torchvision.ops.roi_pool`` over more than 10,000 random RoIs: float32 exactly; float16 exactly equal to
torchvision run in float32 on the same half values and rounded to half (that rounding is exact: every output is
a max of half inputs, 0, or -FLT_MAX -> -inf). Skipped, with the reason, where no g++ can build it.

Glossary: N images, C channels, H x W feature map, R RoIs, PH x PW pooled shape.
"""

from __future__ import annotations

import importlib.resources
import re
import struct
import zlib

import pytest
import torch
import torchvision

from frcnn_trt.engines.tensorrt import emulation as E
from frcnn_trt.engines.tensorrt import kernel as K
from frcnn_trt.engines.tensorrt.cuda_launch import run_roi_pool_cuda
from frcnn_trt.errors import BackendError, ModelError

PACKAGE = "frcnn_trt.engines.tensorrt"
NEG_FLT_MAX = -torch.finfo(torch.float32).max

# (pooled shape, spatial scale, features dtype, rois dtype, number of RoIs, batch N, special feature values)
CONFIGS = [
    ((7, 7), 1 / 16, "float32", "float32", 2000, 2, False),
    ((6, 4), 1 / 12, "float32", "float32", 1500, 3, True),
    ((1, 1), 1.0, "float32", "float32", 1500, 1, False),
    ((3, 5), 4.0, "float32", "float32", 1000, 2, True),
    ((7, 7), 1 / 64, "float32", "float32", 1000, 2, False),
    ((7, 7), 1 / 16, "float16", "float32", 2000, 2, True),
    ((5, 3), 0.5, "float16", "float32", 1000, 3, False),
    ((7, 7), 1 / 16, "float16", "float16", 1000, 2, True),
]


@pytest.fixture(scope="module")
def emulation() -> None:
    """Skip where there is no g++; fail where there is one and the kernel does not build with it."""
    try:
        E.host_compiler()
    except BackendError as exc:
        pytest.skip(f"no host C++ compiler for the kernel emulation: {exc}")
    ok, why = E.emulation_available()
    assert ok, why


def _uniform(gen: torch.Generator, n: int, lo: float, hi: float) -> torch.Tensor:
    return torch.rand(n, generator=gen, dtype=torch.float64) * (hi - lo) + lo


def _random_rois(gen: torch.Generator, count: int, batch: int, img_h: float, img_w: float) -> torch.Tensor:
    """``count`` RoIs in image pixels, in eight kinds: inside, straddling and outside the image, zero-size,
    one-pixel, inverted (x2 < x1), on rounding ties, and larger than the image."""
    kind = torch.arange(count) % 8
    x1, y1 = _uniform(gen, count, -0.2 * img_w, 1.1 * img_w), _uniform(gen, count, -0.2 * img_h, 1.1 * img_h)
    w, h = _uniform(gen, count, 0, 0.8 * img_w), _uniform(gen, count, 0, 0.8 * img_h)
    outside = kind == 1
    x1[outside] = torch.where(x1[outside] > 0.5 * img_w, x1[outside] + 1.3 * img_w, x1[outside] - 1.3 * img_w)
    w[kind == 2], h[kind == 2] = 0.0, 0.0  # zero-size
    w[kind == 3], h[kind == 3] = 1.0, 1.0  # one pixel of the image
    w[kind == 4], h[kind == 4] = -w[kind == 4], -h[kind == 4]  # inverted: forced to 1x1
    ties = kind == 5  # coordinates k + 0.5 on the feature grid (before float32 rounding of the product)
    x1[ties], y1[ties] = x1[ties].round() + 0.5, y1[ties].round() + 0.5
    w[ties], h[ties] = w[ties].round(), h[ties].round()
    big = kind == 6
    x1[big], y1[big] = _uniform(gen, int(big.sum()), -img_w, 0), _uniform(gen, int(big.sum()), -img_h, 0)
    w[big], h[big] = 3.0 * img_w, 3.0 * img_h
    b = torch.randint(0, batch, (count,), generator=gen).double()
    b += torch.where(kind == 7, _uniform(gen, count, 0.0, 0.99), 0.0)  # a fractional index truncates
    return torch.stack([b, x1, y1, x1 + w, y1 + h], dim=1).float()


def _features(gen: torch.Generator, batch: int, dtype: str, special: bool) -> torch.Tensor:
    c, h, w = 4, int(torch.randint(5, 40, (1,), generator=gen)), int(torch.randint(5, 50, (1,), generator=gen))
    x = torch.randn(batch, c, h, w, generator=gen) * 3
    if special:  # NaNs (skipped by the max), +-inf, one all -inf plane (bins give -FLT_MAX / -inf)
        flat = x.view(-1)
        picks = torch.randint(0, flat.numel(), (3, max(1, flat.numel() // 50)), generator=gen)
        flat[picks[0]], flat[picks[1]], flat[picks[2]] = float("nan"), float("inf"), float("-inf")
        x[0, 1] = float("-inf")
    if dtype == "float16":
        x[0, 2, :2, :2] = torch.tensor([6e-8, -3e-5])[:, None]  # half subnormals
    return x.to(E._TORCH_DTYPES[dtype])


def _reference(features: torch.Tensor, rois: torch.Tensor, pooled: tuple[int, int], scale: float) -> torch.Tensor:
    out = torchvision.ops.roi_pool(features.float(), rois.float(), pooled, scale)
    return out.to(features.dtype)


# ----------------------------------------------------------------------------------------------
# The source is the shipped kernel


@pytest.mark.parametrize(
    ("dtype", "rois_dtype"), [("float32", "float32"), ("float16", "float32"), ("float16", "float16")]
)
def test_host_source_is_the_shipped_kernel_with_the_nvrtc_constants(dtype: str, rois_dtype: str) -> None:
    pooled, scale = (6, 4), 1 / 12
    shipped = importlib.resources.files(PACKAGE).joinpath("roi_pool.cu").read_bytes().decode("utf-8")
    shim = importlib.resources.files(PACKAGE).joinpath(E.SHIM_NAME).read_bytes().decode("utf-8")
    baked = K.kernel_source(pooled, scale, dtype, rois_dtype)  # what compile_ptx hands to NVRTC
    source = E.host_source(pooled, scale, dtype, rois_dtype)

    assert baked.endswith(shipped)
    header = baked[: -len(shipped)]
    assert re.sub(r"^(//.*|#define FRCNN_\w+ .*|#line 1 \"roi_pool.cu\")\n", "", header, flags=re.MULTILINE) == ""
    before, sep, after = source.partition(baked)
    assert sep and before == f'#line 1 "{E.SHIM_NAME}"\n{shim}'
    assert after == f'\n#line 1 "frcnn_host_launcher"\nFRCNN_HOST_LAUNCHER({K.kernel_name(dtype, rois_dtype)})\n'
    # the shim sets no kernel constant and undoes none
    assert not re.search(r"#\s*(define|undef)\s+FRCNN_(POOLED|SPATIAL|ROI_POOL_F|NEG)", shim)
    defines = dict(re.findall(r"^#define (FRCNN_\w+) (.*?)(?:\s+/\*.*)?$", header, flags=re.MULTILINE))
    bits = struct.unpack("<I", struct.pack("<f", scale))[0]
    assert defines["FRCNN_POOLED_H"] == "6" and defines["FRCNN_POOLED_W"] == "4"
    assert struct.unpack("<I", struct.pack("<f", float(defines["FRCNN_SPATIAL_SCALE"].strip("()f"))))[0] == bits


# ----------------------------------------------------------------------------------------------
# Parity with torchvision


def test_at_least_ten_thousand_cases() -> None:
    assert sum(cfg[4] for cfg in CONFIGS) >= 10_000
    assert {cfg[2:4] for cfg in CONFIGS} == {("float32", "float32"), ("float16", "float32"), ("float16", "float16")}


@pytest.mark.parametrize(("pooled", "scale", "dtype", "rois_dtype", "count", "batch", "special"), CONFIGS)
def test_matches_torchvision_on_random_rois(
    emulation: None,
    pooled: tuple[int, int],
    scale: float,
    dtype: str,
    rois_dtype: str,
    count: int,
    batch: int,
    special: bool,
) -> None:
    gen = torch.Generator().manual_seed(zlib.crc32(repr((pooled, scale, dtype, rois_dtype)).encode()))
    features = _features(gen, batch, dtype, special)
    img_h, img_w = features.shape[2] / scale, features.shape[3] / scale
    rois = _random_rois(gen, count, batch, img_h, img_w).to(E._TORCH_DTYPES[rois_dtype])
    assert rois.shape[0] == count

    got = E.roi_pool_emulated(features, rois, pooled, scale)
    want = _reference(features, rois, pooled, scale)
    assert got.dtype == features.dtype and got.shape == (count, features.shape[1], *pooled)
    assert not got.isnan().any()
    mismatch = (got != want).nonzero()
    assert mismatch.numel() == 0, f"{len(mismatch)} outputs differ, first at {mismatch[:3].tolist()}"
    if special:  # the all -inf plane reached -FLT_MAX (float32) / -inf (float16) somewhere
        floor = NEG_FLT_MAX if dtype == "float32" else float("-inf")
        assert (got[:, 1] == floor).any()


def test_grid_stride_loop_gives_the_same_result_with_fewer_threads(emulation: None) -> None:
    gen = torch.Generator().manual_seed(5)
    features = _features(gen, 2, "float32", False)
    rois = _random_rois(gen, 200, 2, features.shape[2] * 16.0, features.shape[3] * 16.0)
    want = _reference(features, rois, (7, 7), 1 / 16)
    for grid, block in [(1, 1), (3, 7), (1, 1024), (10_000, 32)]:
        assert torch.equal(E.launch_emulated(features, rois, (7, 7), 1 / 16, grid_x=grid, block_x=block), want)


@pytest.mark.parametrize("dtype", ["float32", "float16"])
def test_batch_index_outside_the_batch_gives_zero(emulation: None, dtype: str) -> None:
    features = torch.randn(2, 3, 8, 8).to(E._TORCH_DTYPES[dtype]) + 10
    rois = torch.tensor([[2, 0, 0, 64, 64], [-1, 0, 0, 64, 64], [1.9, 0, 0, 64, 64], [-0.5, 0, 0, 64, 64]])
    out = E.roi_pool_emulated(features, rois, (2, 2), 1 / 8)
    assert torch.equal(out[:2], torch.zeros_like(out[:2]))
    assert torch.equal(out[2:], _reference(features, rois[2:], (2, 2), 1 / 8))  # truncated toward zero


def test_no_rois_and_an_empty_image(emulation: None) -> None:
    out = E.roi_pool_emulated(torch.randn(1, 3, 4, 4), torch.zeros(0, 5), (7, 7), 1 / 16)
    assert out.shape == (0, 3, 7, 7)
    out = E.roi_pool_emulated(torch.randn(1, 3, 0, 4), torch.tensor([[0.0, 0, 0, 10, 10]]), (2, 2), 1.0)
    assert torch.equal(out, torch.zeros(1, 3, 2, 2))  # every bin clipped empty


# ----------------------------------------------------------------------------------------------
# The shim's half conversions (the PTX cvt instructions)


def test_half_to_float_is_exact_for_every_half(emulation: None) -> None:
    bits = torch.arange(-(2**15), 2**15, dtype=torch.int32).to(torch.int16)
    got, want = E.half_to_float_emulated(bits), bits.view(torch.float16).float()
    nan = want.isnan()
    assert torch.equal(got.isnan(), nan)
    assert torch.equal(got[~nan].view(torch.int32), want[~nan].view(torch.int32))  # -0.0 included


def test_float_to_half_rounds_to_nearest_even(emulation: None) -> None:
    gen = torch.Generator().manual_seed(0)
    random_bits = torch.randint(-(2**31), 2**31 - 1, (400_000,), generator=gen, dtype=torch.int64).to(torch.int32)
    halves = torch.arange(0, 2**15, dtype=torch.int32).to(torch.int16).view(torch.float16).float()
    # ties and neighbours around every positive half spacing, both signs; overflow and underflow edges
    around = torch.cat([halves, torch.nextafter(halves, torch.tensor(float("inf")))])
    mids = (halves[:-1].double() + halves[1:].double()) / 2
    edges = torch.tensor([65504.0, 65519.0, 65520.0, 65536.0, 2.0**-24, 2.0**-25, 2.0**-26, 3e-8, 1e30, NEG_FLT_MAX])
    values = torch.cat([random_bits.view(torch.float32), around, mids.float(), edges])
    values = torch.cat([values, -values])
    got, want = E.float_to_half_emulated(values), values.half()
    nan = want.isnan()
    assert torch.equal(got.isnan(), nan)
    assert torch.equal(got[~nan].view(torch.int16), want[~nan].view(torch.int16))


# ----------------------------------------------------------------------------------------------
# Errors, cache, availability


@pytest.mark.parametrize(
    ("features", "rois", "pooled", "scale", "match"),
    [
        (torch.zeros(3, 4, 4), torch.zeros(1, 5), (2, 2), 1.0, "N, C, H, W"),
        (torch.zeros(1, 3, 4, 4), torch.zeros(1, 4), (2, 2), 1.0, r"\[R, 5\]"),
        (torch.zeros(1, 3, 4, 4, dtype=torch.float64), torch.zeros(1, 5), (2, 2), 1.0, "float32 or float16"),
        (torch.zeros(1, 3, 4, 4), torch.zeros(1, 5, dtype=torch.float16), (2, 2), 1.0, "no RoI-pool kernel"),
        (torch.zeros(1, 3, 4, 4), torch.zeros(1, 5), (0, 2), 1.0, "pooled_shape"),
        (torch.zeros(1, 3, 4, 4), torch.zeros(1, 5), (2, 2), -1.0, "spatial_scale"),
        (torch.zeros(1, 3, 4, 4), torch.zeros(1, 5), (2, 2), 1e40, "spatial_scale"),
        (torch.zeros(1, 3, 4, 4).numpy(), torch.zeros(1, 5), (2, 2), 1.0, "torch tensors"),
    ],
)
def test_bad_inputs_raise_model_error(features: object, rois: object, pooled: object, scale: float, match: str) -> None:
    with pytest.raises(ModelError, match=match):
        E.roi_pool_emulated(features, rois, pooled, scale)  # type: ignore[arg-type]


def test_compiled_library_is_cached_per_source(
    emulation: None, tmp_path: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(E.CACHE_ENV, str(tmp_path))
    source = E.host_source((2, 3), 0.25, "float32")
    first = E._compile(source)
    assert first.parent == tmp_path and first.is_file() and first.with_suffix(".cpp").read_text() == source

    def no_compiler(*args: object, **kwargs: object) -> None:
        raise AssertionError("compiled again although the library was cached")

    monkeypatch.setattr(E.subprocess, "run", no_compiler)
    assert E._compile(source) == first
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([first.name, first.with_suffix(".cpp").name])


def test_cache_folder_must_be_private(tmp_path: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    shared = tmp_path / "shared"
    shared.mkdir(mode=0o777)
    shared.chmod(0o777)
    monkeypatch.setenv(E.CACHE_ENV, str(shared))
    with pytest.raises(BackendError, match="not private"):
        E.cache_dir()


def test_missing_compiler_makes_it_unavailable_with_the_reason(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(E.shutil, "which", lambda name: None)
    E.host_compiler.cache_clear()
    try:
        ok, why = E.emulation_available()
    finally:
        monkeypatch.undo()
        E.host_compiler.cache_clear()
    assert not ok and "'g++' was not found on PATH" in why


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA GPU")
@pytest.mark.parametrize(("pooled", "scale", "dtype", "rois_dtype", "count", "batch", "special"), CONFIGS[::2])
def test_emulation_equals_the_kernel_on_the_gpu_bit_for_bit(
    emulation: None,
    pooled: tuple[int, int],
    scale: float,
    dtype: str,
    rois_dtype: str,
    count: int,
    batch: int,
    special: bool,
) -> None:
    gen = torch.Generator().manual_seed(7)
    features = _features(gen, batch, dtype, special)
    rois = _random_rois(gen, count, batch, features.shape[2] / scale, features.shape[3] / scale)
    rois = rois.to(E._TORCH_DTYPES[rois_dtype])
    on_gpu = run_roi_pool_cuda(features.cuda(), rois.cuda(), pooled, scale).cpu()
    emulated = E.roi_pool_emulated(features, rois, pooled, scale)
    assert torch.equal(
        on_gpu.view(torch.int16 if dtype == "float16" else torch.int32),
        emulated.view(torch.int16 if dtype == "float16" else torch.int32),
    )
