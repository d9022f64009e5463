"""Scale rule, mean subtraction, cv2-compatible bilinear resize and blob padding."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from frcnn_trt.data.blob import (
    compute_scale,
    im_list_to_blob,
    prep_im_for_blob,
    preprocess_images,
    resize_chw,
    resize_hwc,
    scaled_size,
)
from frcnn_trt.errors import ModelError

MEANS = (102.9801, 115.9465, 122.7717)


@pytest.mark.parametrize(
    ("hw", "scale", "out"),
    [
        ((375, 500), 1.6, (600, 800)),
        ((333, 500), 600 / 333, (600, 901)),  # 1.8018
        ((281, 500), 2.0, (562, 1000)),  # 600/281 would give 1068 > 1000: capped
        ((500, 375), 1.6, (800, 600)),
        ((600, 1000), 1.0, (600, 1000)),
    ],
)
def test_scale_rule_reference_numbers(hw: tuple[int, int], scale: float, out: tuple[int, int]) -> None:
    s = compute_scale(hw[0], hw[1], 600, 1000)
    assert s == pytest.approx(scale, abs=1e-12)
    assert scaled_size(hw[0], hw[1], s) == out


def test_scale_rule_rejects_bad_sizes() -> None:
    with pytest.raises(ModelError):
        compute_scale(0, 10, 600, 1000)


def _cv2_linear_reference(im: np.ndarray, s: float) -> np.ndarray:
    """Slow float64 loop version of cv2.resize(fx=s, fy=s, INTER_LINEAR) on H x W x C."""
    h, w = im.shape[:2]
    oh, ow = round(h * s), round(w * s)
    out = np.zeros((oh, ow, im.shape[2]))

    def taps(dst: int, size: int) -> tuple[int, int, float]:
        src = (dst + 0.5) / s - 0.5
        src = max(src, 0.0)
        i0 = min(int(np.floor(src)), size - 1)
        return i0, min(i0 + 1, size - 1), src - i0

    for y in range(oh):
        y0, y1, fy = taps(y, h)
        for x in range(ow):
            x0, x1, fx = taps(x, w)
            top = im[y0, x0] * (1 - fx) + im[y0, x1] * fx
            bottom = im[y1, x0] * (1 - fx) + im[y1, x1] * fx
            out[y, x] = top * (1 - fy) + bottom * fy
    return out


# cv2.resize(im, None, fx=s, fy=s, interpolation=cv2.INTER_LINEAR), channel 0, recorded with OpenCV 5.0.0
# (cv2.ipp.setUseIPP(False): OpenCV's own algorithm).
_PIN_IM = np.array([[-5.0, 16.0, 14.0, 12.0], [10.0, 8.0, 6.0, 4.0], [2.0, 0.0, -2.0, -4.0]])
_PIN_CV2 = {
    1.7: np.array(
        [
            [-5.0, 3.0294118, 15.382353, 14.882353, 13.705882, 12.529411, 12.0],
            [0.7352941, 5.4022493, 12.58218, 11.823529, 10.6470585, 9.470588, 8.941176],
            [9.558823, 9.052769, 8.274221, 7.117647, 5.9411764, 4.764706, 4.2352943],
            [5.5294113, 4.7647057, 3.588235, 2.4117641, 1.2352939, 0.0588231, -0.4705887],
            [2.0, 1.2352941, 0.0588236, -1.1176472, -2.2941175, -3.4705882, -4.0],
        ]
    ),
    0.6: np.array([[4.4444447, 11.333333], [1.3333333, -2.0]]),
}


@pytest.mark.parametrize("s", [1.7, 0.6])
def test_resize_matches_recorded_cv2_output(s: float) -> None:
    t = torch.tensor(_PIN_IM, dtype=torch.float32)[None, None]
    out = resize_chw(t, s)[0, 0].numpy()
    np.testing.assert_allclose(out, _PIN_CV2[s], rtol=0, atol=1e-6)
    np.testing.assert_allclose(out, _cv2_linear_reference(_PIN_IM[:, :, None], s)[:, :, 0], atol=2e-5)


@pytest.mark.parametrize(("hw", "s"), [((9, 13), 600 / 333), ((11, 7), 0.37), ((5, 6), 2.0)])
def test_resize_matches_loop_reference(hw: tuple[int, int], s: float) -> None:
    im = np.random.default_rng(1).uniform(-120, 140, size=(*hw, 3))
    t = torch.tensor(im, dtype=torch.float32).permute(2, 0, 1)[None]
    out = resize_chw(t, s)[0].permute(1, 2, 0).numpy()
    np.testing.assert_allclose(out, _cv2_linear_reference(im, s), atol=1e-3)


def test_resize_does_not_depend_on_thread_count() -> None:
    im = torch.tensor(np.random.default_rng(3).uniform(-120, 140, size=(37, 53, 3)), dtype=torch.float32)
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = resize_hwc(im, 600 / 37)
        torch.set_num_threads(max(2, threads))
        many = resize_hwc(im, 600 / 37)
    finally:
        torch.set_num_threads(threads)
    assert torch.equal(one, many)


def test_mean_subtraction_happens_before_resize() -> None:
    const = np.full((3, 5, 3), 100, dtype=np.uint8)
    out, s = prep_im_for_blob(const, MEANS, 6, 1000)
    assert s == 2.0 and out.shape == (6, 10, 3) and out.dtype == np.float32
    for c in range(3):
        np.testing.assert_allclose(out[:, :, c], np.float32(100) - np.float32(MEANS[c]), rtol=0, atol=1e-5)
    # A gradient: interpolated values are not integers (+ mean), so no uint8 resize happened first.
    ramp = np.tile(np.array([0, 7, 200], dtype=np.uint8)[None, :, None], (3, 1, 3))
    out, s = prep_im_for_blob(ramp, MEANS, 6, 1000)
    expected = _cv2_linear_reference(ramp.astype(np.float64) - np.array(MEANS), s)
    np.testing.assert_allclose(out, expected, atol=1e-4)
    frac = (out[:, :, 0] + MEANS[0]) % 1.0
    assert ((frac > 0.01) & (frac < 0.99)).any()


def test_im_list_to_blob_zero_pads_nchw_bgr() -> None:
    a = np.arange(2 * 3 * 3, dtype=np.float32).reshape(2, 3, 3) + 1
    b = -np.arange(4 * 2 * 3, dtype=np.float32).reshape(4, 2, 3) - 1
    blob = im_list_to_blob([a, b])
    assert blob.shape == (2, 3, 4, 3) and blob.dtype == np.float32
    np.testing.assert_array_equal(blob[0, :, :2, :3], a.transpose(2, 0, 1))
    np.testing.assert_array_equal(blob[0, :, 2:, :], 0)
    np.testing.assert_array_equal(blob[1, :, :4, :2], b.transpose(2, 0, 1))
    np.testing.assert_array_equal(blob[1, :, :, 2:], 0)
    np.testing.assert_array_equal(blob[0, 0, 0, :3], a[0, :, 0])  # channel 0 stays B


def test_preprocess_images_matches_numpy_path_and_reports_own_sizes() -> None:
    rng = np.random.default_rng(2)
    im1 = rng.integers(0, 256, (15, 20, 3), dtype=np.uint8)  # 375x500 shape /25 -> scale 1.6
    im2 = rng.integers(0, 256, (20, 15, 3), dtype=np.uint8)
    blob, im_info = preprocess_images([im1, torch.from_numpy(im2)], MEANS, 24, 40, device="cpu")
    assert blob.shape == (2, 3, 32, 32) and blob.dtype == torch.float32
    assert im_info.dtype == torch.float32
    np.testing.assert_allclose(im_info.numpy(), [[24, 32, 1.6], [32, 24, 1.6]], rtol=1e-6)
    ref = im_list_to_blob([prep_im_for_blob(im1, MEANS, 24, 40)[0], prep_im_for_blob(im2, MEANS, 24, 40)[0]])
    assert np.array_equal(blob.numpy(), ref)  # the torch and numpy paths agree bit for bit
    assert (blob[0, :, 24:, :] == 0).all() and (blob[1, :, :, 24:] == 0).all()


def test_preprocess_images_rejects_bad_input() -> None:
    with pytest.raises(ModelError, match="uint8"):
        preprocess_images([torch.zeros(4, 4, 3)], MEANS, 600, 1000)
    with pytest.raises(ModelError, match="H x W x 3"):
        preprocess_images([np.zeros((4, 4), dtype=np.uint8)], MEANS, 600, 1000)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_preprocess_images_on_cuda_matches_cpu() -> None:
    rng = np.random.default_rng(4)
    ims = [rng.integers(0, 256, (333, 500, 3), dtype=np.uint8), rng.integers(0, 256, (500, 353, 3), dtype=np.uint8)]
    blob_cpu, info_cpu = preprocess_images(ims, MEANS, 600, 1000, device="cpu")
    blob_gpu, info_gpu = preprocess_images(ims, MEANS, 600, 1000, device="cuda")
    assert blob_gpu.device.type == "cuda" and info_gpu.device.type == "cuda"
    torch.testing.assert_close(info_gpu.cpu(), info_cpu, rtol=0, atol=0)
    torch.testing.assert_close(blob_gpu.cpu(), blob_cpu, rtol=0, atol=1e-4)


def test_scale_one_skips_the_resize_bit_identically(monkeypatch: pytest.MonkeyPatch) -> None:
    """At s = 1 the resize is skipped; its output would be the same bits (identity taps)."""
    rng = np.random.default_rng(4)
    im = rng.integers(0, 256, (24, 40, 3), dtype=np.uint8)
    assert compute_scale(24, 40, 24, 40) == 1.0
    centred = (torch.from_numpy(im).to(torch.float64) - torch.tensor(MEANS, dtype=torch.float64)).float()
    general = resize_hwc(centred, 1.0, out_hw=(24, 40))  # the gathers and multiply-adds
    fast = resize_hwc(centred, 1.0)
    assert fast.data_ptr() != centred.data_ptr()  # still a new tensor
    assert torch.equal(general.view(torch.int32), fast.view(torch.int32))  # bit for bit
    prep, s = prep_im_for_blob(im, MEANS, 24, 40)
    assert s == 1.0 and np.array_equal(prep.view(np.int32), general.numpy().view(np.int32))
    blob_before, _ = preprocess_images([im], MEANS, 24, 40)

    def no_resize(*args: object, **kwargs: object) -> torch.Tensor:
        raise AssertionError("resize_hwc called at scale 1")

    monkeypatch.setattr("frcnn_trt.data.blob.resize_hwc", no_resize)
    blob, im_info = preprocess_images([im], MEANS, 24, 40)
    assert torch.equal(blob.view(torch.int32), blob_before.view(torch.int32))
    assert torch.equal(blob[0].view(torch.int32), general.permute(2, 0, 1).contiguous().view(torch.int32))
    assert im_info.tolist() == [[24.0, 40.0, 1.0]]
    with pytest.raises(AssertionError, match="scale 1"):  # any other scale still resizes
        preprocess_images([im], MEANS, 25, 42)
