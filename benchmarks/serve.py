"""Throughput and latency of ``bgremove serve`` on loopback, for 1, 2 and 4 concurrent clients.

Run: python benchmarks/serve.py [--requests 24] [--seconds 60] [--workers 2] [--size 1024x768] [--model DIR]
It starts the server in its own process (the default weights unless --model), waits for /v1/health, then
for each client count sends --requests photos (or stops after --seconds) and prints requests per second
and the median and 95th-percentile latency. Prints numbers; asserts nothing.
"""

from __future__ import annotations

import argparse
import http.client
import io
import socket
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from PIL import Image

REPO = Path(__file__).resolve().parents[1]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _post(port: int, body: bytes) -> tuple[int, float]:
    started = time.perf_counter()
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=300)
    try:
        connection.request("POST", "/v1/remove", body=body, headers={"Content-Type": "image/jpeg"})
        response = connection.getresponse()
        response.read()
        return response.status, time.perf_counter() - started
    finally:
        connection.close()


def _wait_for(port: int, server: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        try:
            connection = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
            connection.request("GET", "/v1/health")
            if connection.getresponse().status == 200:
                return
        except OSError:
            if server.poll() is not None:
                break
            time.sleep(0.3)
    raise SystemExit("the server did not start")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=24, help="requests per client count")
    parser.add_argument("--seconds", type=float, default=60.0, help="stop a client count after this long")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--size", default="1024x768")
    parser.add_argument("--model", default=None)
    args = parser.parse_args()
    width, height = (int(v) for v in args.size.split("x"))
    buffer = io.BytesIO()
    Image.open(REPO / "examples" / "astronaut.jpg").convert("RGB").resize((width, height)).save(buffer, "JPEG", quality=90)
    photo = buffer.getvalue()
    port = _free_port()
    command = [sys.executable, "-c", "from bgremove_plugin.cli import main; raise SystemExit(main())", "serve",
               "--port", str(port), "--workers", str(args.workers), "--queue", "64"]
    if args.model:
        command += ["--model", args.model]
    server = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        _wait_for(port, server)
        _post(port, photo)  # warm-up
        print(f"| clients | requests | requests/s | p50 ms | p95 ms | non-200 |  ({args.size}, {args.workers} workers)")
        print("|---|---|---|---|---|---|")
        for clients in (1, 2, 4):
            started = time.perf_counter()
            results: list[tuple[int, float]] = []

            def one(_: int, started: float = started) -> tuple[int, float] | None:
                if time.perf_counter() - started > args.seconds:
                    return None
                return _post(port, photo)

            with ThreadPoolExecutor(max_workers=clients) as pool:
                results = [r for r in pool.map(one, range(args.requests)) if r is not None]
            elapsed = time.perf_counter() - started
            latencies = sorted(seconds for _, seconds in results)
            p95 = latencies[min(len(latencies) - 1, round(0.95 * (len(latencies) - 1)))]
            failed = sum(status != 200 for status, _ in results)
            print(f"| {clients} | {len(results)} | {len(results) / elapsed:.2f} | {statistics.median(latencies) * 1000:.0f} "
                  f"| {p95 * 1000:.0f} | {failed} |")
    finally:
        server.terminate()
        server.wait(timeout=30)


if __name__ == "__main__":
    main()
