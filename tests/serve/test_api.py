"""``frcnn-trt serve`` over real HTTP (uvicorn on loopback): answers, schema, limits, errors, metrics."""

from __future__ import annotations

import base64
import io
import json
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image

from frcnn_trt.engines.detector import Detector
from frcnn_trt.io import sha256_file
from frcnn_trt.serve import ServeSettings, create_app, export_max_batch
from tests.serve.conftest import HTTP_TIMEOUT, FailingBackend, encode, scene, thread_server

MAX_BODY = 200_000
MAX_PIXELS = 1_000_000


@pytest.fixture(scope="module")
def url(detector: Detector) -> Iterator[str]:
    app = create_app(detector, ServeSettings(batch_wait_ms=2.0, max_body_bytes=MAX_BODY, max_pixels=MAX_PIXELS))
    with thread_server(app) as base:
        yield base


@pytest.fixture
def client(url: str) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=url, timeout=HTTP_TIMEOUT) as c:
        yield c


def _post(client: httpx.Client, data: bytes, name: str = "img.png", params: dict | None = None,
          ctype: str = "image/png") -> httpx.Response:
    return client.post("/v1/detect", files={"image": (name, data, ctype)}, params=params)


def _is_error(r: httpx.Response, status: int, error: str | None = None) -> dict:
    assert r.status_code == status, r.text
    assert r.headers["content-type"].startswith("application/json")
    body = r.json()
    assert set(body) == {"error", "detail"} and body["detail"], body
    assert "Traceback" not in r.text and "File \"" not in r.text
    if error is not None:
        assert body["error"] == error, body
    return body


# ------------------------------------------------------------------------------------------------ good requests


def test_healthz_and_index(client: httpx.Client) -> None:
    assert client.get("/healthz").json() == {"status": "ok"}
    assert "/v1/detect" in client.get("/").json()["endpoints"]


def test_model_info(client: httpx.Client, detector: Detector, serve_export: Path) -> None:
    body = client.get("/v1/model").json()
    assert body["class_names"] == list(detector.class_names)
    assert body["classes"] == list(detector.class_names[1:])
    assert body["backend"] == "onnxruntime"
    assert body["precision"] == {"rpn.onnx": "fp32", "detector.onnx": "fp32"}
    assert body["export"]["sha256"] == sha256_file(serve_export / "export.json")
    assert body["max_batch"] == export_max_batch(detector.export)  # type: ignore[arg-type]
    assert body["defaults"] == {"conf": detector.conf_thresh, "nms": detector.nms, "max_dets": detector.max_dets}
    assert body["limits"]["max_pixels"] == MAX_PIXELS


def test_detect_matches_the_library(client: httpx.Client, detector: Detector) -> None:
    img = scene(150, 200, seed=1)
    r = _post(client, encode(img), name="holiday.png", params={"conf": "0.0"})
    assert r.status_code == 200, r.text
    body = r.json()
    assert {"image_id", "file", "width", "height", "detections", "backend", "batch_size", "timing_ms"} <= set(body)
    assert (body["image_id"], body["file"], body["width"], body["height"]) == ("holiday", "holiday.png", 200, 150)
    assert body["batch_size"] == 1  # alone: the same blob as a direct call, so the same numbers
    ref = Detector(detector.backend, detector.settings, conf_thresh=0.0, export=detector.export).detect([img])[0]
    dets = body["detections"]
    assert len(dets) == len(ref) > 0
    np.testing.assert_array_equal(np.array([d["box"] for d in dets], np.float32), ref.boxes)
    np.testing.assert_array_equal(np.array([d["score"] for d in dets], np.float32), ref.scores)
    assert [d["class_id"] for d in dets] == ref.labels.tolist()  # type: ignore[union-attr]
    assert [d["label"] for d in dets] == ref.label_names
    boxes = np.array([d["box"] for d in dets])
    assert (boxes[:, 0] >= 0).all() and (boxes[:, 2] <= 199).all()
    assert (boxes[:, 1] >= 0).all() and (boxes[:, 3] <= 149).all()


def test_thresholds_from_the_query(client: httpx.Client) -> None:
    data = encode(scene(seed=2))
    everything = _post(client, data, params={"conf": "0"}).json()["detections"]
    assert len(everything) > 3
    high = _post(client, data, params={"conf": "0.5"}).json()["detections"]
    assert all(d["score"] > 0.5 for d in high) and len(high) < len(everything)
    assert len(_post(client, data, params={"conf": "0", "max_dets": "2"}).json()["detections"]) <= 2


@pytest.mark.parametrize("fmt", ["png", "jpeg"])
def test_annotated_image(client: httpx.Client, fmt: str) -> None:
    r = _post(client, encode(scene(seed=3), "JPEG"), name="a.jpg", params={"annotated": fmt, "conf": "0.1"},
              ctype="image/jpeg")
    assert r.status_code == 200, r.text
    annotated = r.json()["annotated"]
    assert annotated["media_type"] == f"image/{fmt}"
    with Image.open(io.BytesIO(base64.b64decode(annotated["base64"]))) as im:
        assert im.format == fmt.upper() and im.size == (200, 150)


def test_raw_body_upload(client: httpx.Client) -> None:
    r = client.post("/v1/detect", content=encode(scene(seed=4)), headers={"content-type": "image/png"})
    assert r.status_code == 200, r.text
    assert r.json()["file"] == "body" and r.json()["width"] == 200


# ------------------------------------------------------------------------------------------------ bad requests


def _pixel_bomb() -> bytes:
    buf = io.BytesIO()
    Image.new("1", (20_000, 20_000)).save(buf, format="PNG")  # 400 Mpx behind a few kB
    assert len(buf.getvalue()) < MAX_BODY
    return buf.getvalue()


BAD_UPLOADS = {
    "text file": (b"hello, I am not a picture\n" * 10, "notes.txt", 415, "unsupported_media_type"),
    "truncated jpeg": (encode(scene(seed=5), "JPEG")[:700], "cut.jpg", 422, "invalid_image"),
    "empty upload": (b"", "empty.png", 422, "invalid_image"),
    "pixel bomb": (_pixel_bomb(), "bomb.png", 413, "image_too_large"),
    "png header only": (encode(scene(seed=6))[:40], "head.png", 422, "invalid_image"),
}


@pytest.mark.parametrize("case", list(BAD_UPLOADS))
def test_bad_uploads(client: httpx.Client, case: str) -> None:
    data, name, status, error = BAD_UPLOADS[case]
    _is_error(_post(client, data, name=name), status, error)
    assert client.get("/healthz").status_code == 200  # the service survives


def test_body_over_the_limit(client: httpx.Client) -> None:
    big = b"\0" * (MAX_BODY + 1000)
    body = _is_error(_post(client, big), 413, "payload_too_large")
    assert "Content-Length" in body["detail"]

    def chunks() -> Iterator[bytes]:  # no Content-Length: counted while it streams in
        for _ in range(40):
            yield b"\0" * 16_384

    r = client.post("/v1/detect", content=chunks(), headers={"content-type": "image/png"})
    body = _is_error(r, 413, "payload_too_large")
    assert "so far" in body["detail"]


def test_missing_and_wrong_fields(client: httpx.Client) -> None:
    data = encode(scene())
    _is_error(client.post("/v1/detect", files={"picture": ("a.png", data, "image/png")}), 422, "missing_field")
    _is_error(client.post("/v1/detect", data={"image": "not a file"}, files={"x": ("a", b"1")}), 422,
              "invalid_field")
    _is_error(client.post("/v1/detect", content=b"{}", headers={"content-type": "application/json"}), 415,
              "unsupported_media_type")
    _is_error(client.post("/v1/detect", content=b"--x\r\nbroken", headers={"content-type": "multipart/form-data"}),
              400, "bad_request")  # no boundary: not a multipart body at all


@pytest.mark.parametrize("query", [
    "conf=abc", "conf=1.0", "conf=-0.1", "conf=nan", "conf=inf", "nms=0", "nms=1.5", "max_dets=0", "max_dets=1.5",
    "max_dets=100001", "annotated=gif", "confidence=0.5", "conf=0.1&conf=0.2",
])
def test_bad_query_values(client: httpx.Client, query: str) -> None:
    r = client.post(f"/v1/detect?{query}", files={"image": ("a.png", encode(scene()), "image/png")})
    _is_error(r, 422, "invalid_parameter")


def test_wrong_method_and_unknown_path(client: httpx.Client) -> None:
    body = _is_error(client.get("/v1/detect"), 405, "method_not_allowed")
    assert body["detail"]
    _is_error(client.post("/healthz"), 405, "method_not_allowed")
    _is_error(client.get("/v2/nothing"), 404, "not_found")


# ------------------------------------------------------------------------------------------------ metrics


def test_metrics_after_requests(client: httpx.Client) -> None:
    assert _post(client, encode(scene(seed=7))).status_code == 200
    _is_error(client.get("/v1/detect"), 405)
    client.get("/no/such/route/at/all")
    r = client.get("/metrics")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain")
    text = r.text
    assert 'frcnn_serve_requests_total{method="POST",route="/v1/detect",status="200"}' in text
    assert 'frcnn_serve_requests_total{method="GET",route="/v1/detect",status="405"}' in text
    assert 'route="other",status="404"' in text and "/no/such/route" not in text
    for name in ("frcnn_serve_request_seconds_bucket", "frcnn_serve_batch_size_bucket",
                 "frcnn_serve_batch_seconds_count", "frcnn_serve_queue_depth", "frcnn_serve_in_flight"):
        assert name in text, name


# ------------------------------------------------------------------------------------------------ failures


def test_inference_failure_is_a_500_and_the_service_lives(detector: Detector) -> None:
    broken = Detector(FailingBackend(), detector.settings, export=detector.export)
    with thread_server(create_app(broken, ServeSettings(batch_wait_ms=0.0))) as base, \
            httpx.Client(base_url=base, timeout=HTTP_TIMEOUT) as c:
        for _ in range(2):
            body = _is_error(_post(c, encode(scene())), 500, "inference_failed")
            assert "secret" not in body["detail"]
        assert c.get("/healthz").json() == {"status": "ok"}
        assert 'status="500"' in c.get("/metrics").text


def test_settings_are_checked(detector: Detector) -> None:
    from frcnn_trt.errors import ConfigError

    with pytest.raises(ConfigError, match="queue_size"):
        ServeSettings(queue_size=-1)
    with pytest.raises(ConfigError, match="batch_wait_ms"):
        ServeSettings(batch_wait_ms=float("nan"))
    with pytest.raises(ConfigError, match="largest batch"):
        create_app(detector, ServeSettings(max_batch=999))
    json.dumps(create_app(detector).state.service.model)  # the model document is plain JSON
