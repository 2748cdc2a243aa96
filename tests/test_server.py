"""``bgremove serve`` for real: the server runs in its own process on 127.0.0.1 and is called over HTTP."""

from __future__ import annotations

import http.client
import io
import json
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from bgremove_plugin import BackgroundRemover

from .conftest import PORTRAIT, free_port

MAX_PIXELS = 1_000_000
MAX_BYTES = 600_000


def _start(weights: Path, *options: str) -> tuple[subprocess.Popen[bytes], int]:
    port = free_port()
    command = [sys.executable, "-c", "from bgremove_plugin.cli import main; raise SystemExit(main())",
               "serve", "--port", str(port), "--model", str(weights), "--device", "cpu", *options]
    server = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        try:
            status, _, _ = _request(port, "GET", "/v1/health")
            if status == 200:
                return server, port
        except OSError:
            if server.poll() is not None:
                break
            time.sleep(0.2)
    server.kill()
    raise AssertionError(f"the server did not start: {server.communicate()[0].decode()[-2000:]}")


def _stop(server: subprocess.Popen[bytes]) -> None:
    server.terminate()
    try:
        server.wait(timeout=20)
    except subprocess.TimeoutExpired:
        server.kill()


def _request(port: int, method: str, path: str, body: bytes | None = None,
             headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], bytes]:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
    try:
        connection.request(method, path, body=body, headers=headers or {})
        response = connection.getresponse()
        return response.status, {k.lower(): v for k, v in response.getheaders()}, response.read()
    finally:
        connection.close()


def _png(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def _post(port: int, photo: bytes, query: str = "", content_type: str = "image/png") -> tuple[int, dict[str, str], bytes]:
    return _request(port, "POST", f"/v1/remove{query}", photo, {"Content-Type": content_type})


def _multipart(port: int, photo: bytes, field: str = "image") -> tuple[int, dict[str, str], bytes]:
    boundary = uuid.uuid4().hex
    body = (
        f"--{boundary}\r\nContent-Disposition: form-data; name=\"{field}\"; filename=\"photo.png\"\r\n"
        f"Content-Type: image/png\r\n\r\n"
    ).encode() + photo + f"\r\n--{boundary}--\r\n".encode()
    return _request(port, "POST", "/v1/remove", body, {"Content-Type": f"multipart/form-data; boundary={boundary}"})


@pytest.fixture(scope="module")
def photo() -> Image.Image:
    return Image.open(PORTRAIT).convert("RGB").resize((160, 120))


@pytest.fixture(scope="module")
def server(tiny_weights: Path) -> Iterator[int]:
    process, port = _start(tiny_weights, "--workers", "2", "--queue", "32", "--max-pixels", str(MAX_PIXELS),
                           "--max-bytes", str(MAX_BYTES))
    yield port
    _stop(process)


def test_health_names_the_weights_and_device(server: int, tiny_weights: Path) -> None:
    status, headers, body = _request(server, "GET", "/v1/health")
    health = json.loads(body)
    assert status == 200 and headers["content-type"] == "application/json"
    assert health["status"] == "ok" and health["weights"] == str(tiny_weights) and health["device"] == "cpu"
    assert (health["workers"], health["queue"], health["max_pixels"]) == (2, 32, MAX_PIXELS)
    local = BackgroundRemover(tiny_weights, device="cpu")
    assert (health["backend"], health["precision"]) == (local.backend, local.precision)
    assert _request(server, "GET", "/docs")[0] == 200 and _request(server, "GET", "/openapi.json")[0] == 200


def test_a_cut_out_of_the_photos_size_from_a_raw_body_or_a_multipart_field(
    server: int, photo: Image.Image, tiny_weights: Path
) -> None:
    expected = np.asarray(BackgroundRemover(tiny_weights, device="cpu").remove(photo))
    for status, headers, body in (_post(server, _png(photo)), _multipart(server, _png(photo))):
        assert status == 200 and headers["content-type"] == "image/png"
        np.testing.assert_array_equal(np.asarray(Image.open(io.BytesIO(body))), expected)


@pytest.mark.parametrize(("query", "mode", "content_type"), [
    ("?background=white", "RGB", "image/png"),
    ("?background=%2300ff00&format=jpeg", "RGB", "image/jpeg"),
    ("?mask=true", "L", "image/png"),
    ("?format=webp", "RGBA", "image/webp"),
    ("?refine=none&decontaminate=true", "RGBA", "image/png"),
])
def test_each_option_is_honoured(server: int, photo: Image.Image, tiny_weights: Path, query: str, mode: str,
                                 content_type: str) -> None:
    status, headers, body = _post(server, _png(photo), query)
    result = Image.open(io.BytesIO(body))
    assert status == 200 and headers["content-type"] == content_type
    assert result.mode == mode and result.size == photo.size
    if query == "?mask=true":
        mask = BackgroundRemover(tiny_weights, device="cpu").remove(photo, return_mask=True)
        np.testing.assert_array_equal(np.asarray(result), np.asarray(mask))


def test_a_threshold_gives_hard_edges(server: int, photo: Image.Image) -> None:
    status, _, body = _post(server, _png(photo), "?threshold=0.5&mask=true")
    assert status == 200 and set(np.unique(np.asarray(Image.open(io.BytesIO(body))))) <= {0, 255}


@pytest.mark.parametrize(("query", "body", "content_type", "status", "message"), [
    ("", b"not an image at all", "image/png", 400, "not a readable image"),
    ("", b"", "image/png", 400, "holds no image"),
    ("", b"hello", "text/plain", 415, "content type"),
    ("?bogus=1", None, "image/png", 422, "unknown option bogus"),
    ("?threshold=abc", None, "image/png", 422, "malformed option: threshold"),
    ("?threshold=1.5", None, "image/png", 422, "threshold"),
    ("?refine=sharp", None, "image/png", 422, "refine"),
    ("?format=gif", None, "image/png", 422, "format"),
    ("?format=jpeg", None, "image/png", 422, "JPEG has no transparency"),
    ("?background=notacolour", None, "image/png", 422, "not a colour name"),
])
def test_bad_requests_get_a_json_4xx_and_the_server_keeps_serving(
    server: int, photo: Image.Image, query: str, body: bytes | None, content_type: str, status: int, message: str
) -> None:
    got, headers, answer = _post(server, _png(photo) if body is None else body, query, content_type)
    assert got == status and headers["content-type"] == "application/json"
    assert message in json.loads(answer)["error"]
    assert _post(server, _png(photo))[0] == 200


def test_truncated_and_oversized_photos_are_refused(server: int, photo: Image.Image) -> None:
    whole = _png(photo)
    got, _, answer = _post(server, whole[: len(whole) // 2])
    assert got == 400 and "truncated" in json.loads(answer)["error"]
    big = Image.fromarray(np.random.default_rng(0).integers(0, 255, (1001, 1000, 3), dtype=np.uint8))
    got, _, answer = _post(server, _png(big.resize((1100, 1000))))  # over the byte limit too: bytes are checked first
    assert got == 413
    got, _, answer = _post(server, _png(Image.new("RGB", (1001, 1000))))  # small file, too many pixels
    assert got == 413 and "megapixels" in json.loads(answer)["error"]


def test_a_burst_of_concurrent_requests_is_answered_in_full(server: int, photo: Image.Image) -> None:
    photos = [_png(photo.rotate(angle)) for angle in range(0, 360, 30)]  # 12 different photos
    with ThreadPoolExecutor(max_workers=12) as clients:
        answers = list(clients.map(lambda data: _post(server, data), photos))
    assert [status for status, _, _ in answers] == [200] * len(photos)
    assert all(Image.open(io.BytesIO(body)).size == photo.size for _, _, body in answers)


def test_a_full_queue_answers_503_with_retry_after_and_serves_again(tiny_weights: Path) -> None:
    process, port = _start(tiny_weights, "--workers", "1", "--queue", "0")
    try:
        slow = _png(Image.open(PORTRAIT).convert("RGB").resize((1400, 1400)))  # matting at this size takes a while
        with ThreadPoolExecutor(max_workers=6) as clients:
            answers = list(clients.map(lambda _: _post(port, slow, "?refine=matting"), range(6)))
        statuses = sorted(status for status, _, _ in answers)
        assert statuses[0] == 200 and 503 in statuses and set(statuses) == {200, 503}
        refused = next(headers for status, headers, _ in answers if status == 503)
        assert refused["retry-after"] == "2"
        assert _post(port, _png(Image.new("RGB", (32, 32))))[0] == 200
    finally:
        _stop(process)
