"""Load benchmark of `ferkit serve` on loopback: throughput, latency percentiles, answers by status and the
server's memory, at several numbers of concurrent clients.

    FERKIT_DATA=../shared/data/fer2013.csv.gz python bench/serve_load.py
        [--models ferkit-fer2013-fast ferkit-fer2013] [--concurrency 1 16 64] [--requests 400]
        [--seconds 60] [--soak 2000] [--soak_seconds 300] [--photo PHOTO] [--serve_args "--workers 2"]

For each model it starts `ferkit serve --port 0` (127.0.0.1 only) in a subprocess and sends one 512x512
JPEG with one real face (a FER2013 PublicTest face enlarged onto a textured background, or `--photo`
resized to 512x512) from that many client threads, each on its own keep-alive connection, each sending
its next request as soon as it has an answer. A client told 503 waits the Retry-After the server sent
(as a client should), then sends again. Every level stops after `--requests` answers or `--seconds`,
whichever comes first. Then `--soak` requests at concurrency 16 (or `--soak_seconds`) show whether the
server's memory stays flat. Nothing leaves the machine, and nothing is written but the temporary photo.
"""

from __future__ import annotations

import argparse
import http.client
import itertools
import os
import platform
import shlex
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np

from ferkit.data import load_dataset
from ferkit.utils.device import cpu_name

FACE_INDEX = 34  # a PublicTest face the cascade finds when enlarged (as in tests/test_predict.py)
SIDE, FACE_SIDE = 512, 200
BOUNDARY = "ferkitbench"
SOAK_CONCURRENCY = 16
SOAK_STEP = 500  # requests between two memory readings


# ----------------------------------------------------------------------------- the photo
def make_photo(path: Path, photo: str | None) -> bytes:
    """A 512x512 JPEG with one real face: a FER2013 PublicTest face enlarged to 200 px on a textured
    background, or `photo` resized to 512x512."""
    if photo:
        image = cv2.imread(photo)
        if image is None:
            raise SystemExit(f"bench/serve_load.py: --photo {photo}: not an image OpenCV can read")
        image = cv2.resize(image, (SIDE, SIDE), interpolation=cv2.INTER_AREA)
    else:
        data = load_dataset()
        face = data.images[np.flatnonzero(data.splits == "PublicTest")[FACE_INDEX]]
        rng = np.random.default_rng(0)
        noise = np.clip(rng.normal(128, 20, (SIDE, SIDE)), 0, 255).astype(np.uint8)
        image = cv2.GaussianBlur(noise, (0, 0), 3)
        top = (SIDE - FACE_SIDE) // 2
        image[top : top + FACE_SIDE, top : top + FACE_SIDE] = cv2.resize(
            face, (FACE_SIDE, FACE_SIDE), interpolation=cv2.INTER_CUBIC
        )
    ok, jpeg = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, 90])
    assert ok
    path.write_bytes(jpeg.tobytes())
    return jpeg.tobytes()


def multipart(data: bytes) -> bytes:
    head = f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="file"; filename="photo.jpg"\r\n'
    return head.encode() + b"Content-Type: image/jpeg\r\n\r\n" + data + f"\r\n--{BOUNDARY}--\r\n".encode()


# ----------------------------------------------------------------------------- the server
@dataclass
class Server:
    proc: subprocess.Popen
    host: str
    port: int

    @classmethod
    def start(cls, model: str, serve_args: list[str]) -> Server:
        cmd = [sys.executable, "-m", "ferkit", "serve", "--model_path", model, "--port", "0", *serve_args]
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True)
        line = proc.stdout.readline() if proc.stdout else ""
        if " at http://" not in line:
            proc.kill()
            raise SystemExit(f"bench/serve_load.py: the server did not start: {line.strip()}")
        host, port = line.split(" at http://")[1].split("/")[0].rsplit(":", 1)
        server = cls(proc, host, int(port))
        deadline = time.monotonic() + 300
        while not server.healthy():  # --workers: each process loads the model first
            if time.monotonic() > deadline or proc.poll() is not None:
                raise SystemExit("bench/serve_load.py: the server never answered /health")
            time.sleep(0.2)
        return server

    def healthy(self) -> bool:
        try:
            with urllib.request.urlopen(f"http://{self.host}:{self.port}/health", timeout=5) as r:
                return r.status == 200
        except OSError:
            return False

    def pids(self) -> list[int]:
        """The server and its worker processes (Linux /proc)."""
        found = [self.proc.pid]
        for stat in Path("/proc").glob("[0-9]*/stat"):
            try:
                if int(stat.read_text().rsplit(")", 1)[1].split()[1]) == self.proc.pid:
                    found.append(int(stat.parent.name))
            except (OSError, ValueError, IndexError):
                continue
        return found

    def cpu_seconds(self) -> float:
        """CPU time (user + system) the server's processes have used so far."""
        total = 0
        for pid in self.pids():
            try:
                fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
                total += int(fields[11]) + int(fields[12])  # utime, stime: fields 14 and 15 of stat
            except (OSError, ValueError, IndexError):
                continue
        return total / os.sysconf("SC_CLK_TCK")

    def memory_mb(self, key: str = "VmRSS") -> float:
        """`key` (VmRSS now, VmHWM the peak) summed over the server's processes, in MiB."""
        total = 0
        for pid in self.pids():
            try:
                for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                    if line.startswith(key + ":"):
                        total += int(line.split()[1])
            except OSError:
                continue
        return total / 1024

    def stop(self) -> None:
        self.proc.terminate()  # SIGTERM: uvicorn shuts down gracefully
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


# ----------------------------------------------------------------------------- the clients
@dataclass
class Level:
    """The answers of one level: (status, seconds) each, and its wall time."""

    concurrency: int
    answers: list[tuple[int, float]] = field(default_factory=list)
    wall: float = 0.0
    server_cpu: float = 0.0  # seconds
    client_cpu: float = 0.0

    def row(self, memory_mb: float) -> str:
        ok = sorted(t for s, t in self.answers if s == 200)
        busy = [t for s, t in self.answers if s == 503]
        other = len(self.answers) - len(ok) - len(busy)
        pct = [1000 * float(np.percentile(ok, q)) for q in (50, 95, 99)] if ok else [float("nan")] * 3
        busy_ms = f"{1000 * max(busy):.0f}" if busy else "-"
        return (
            f"| {self.concurrency} | {len(self.answers)} | {len(ok)} | {len(busy)} | {other} | "
            f"{len(ok) / self.wall:.1f} | {pct[0]:.0f} | {pct[1]:.0f} | {pct[2]:.0f} | {busy_ms} | "
            f"{1000 * self.server_cpu / max(1, len(ok)):.0f} | "
            f"{1000 * self.client_cpu / max(1, len(self.answers)):.1f} | {memory_mb:.0f} |"
        )


def client(server: Server, body: bytes, tickets: itertools.count, limit: int, deadline: float, level: Level):
    """One client: requests one after the other on a keep-alive connection until the level ends."""
    headers = {"Content-Type": f"multipart/form-data; boundary={BOUNDARY}"}
    conn = http.client.HTTPConnection(server.host, server.port, timeout=120)
    while next(tickets) < limit and time.monotonic() < deadline:
        start = time.perf_counter()
        try:
            conn.request("POST", "/predict", body, headers)
            response = conn.getresponse()
            response.read()
            status, retry = response.status, response.getheader("Retry-After")
        except (OSError, http.client.HTTPException):
            status, retry = 0, None
            conn.close()
            conn = http.client.HTTPConnection(server.host, server.port, timeout=120)
        level.answers.append((status, time.perf_counter() - start))  # list.append: thread-safe
        if status == 503 and retry:
            time.sleep(min(float(retry), max(0.0, deadline - time.monotonic())))
    conn.close()


def run_level(server: Server, body: bytes, concurrency: int, requests: int, seconds: float) -> Level:
    level = Level(concurrency)
    tickets, deadline = itertools.count(), time.monotonic() + seconds
    threads = [
        threading.Thread(target=client, args=(server, body, tickets, requests, deadline, level))
        for _ in range(concurrency)
    ]
    start, server_cpu, client_cpu = time.perf_counter(), server.cpu_seconds(), time.process_time()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    level.wall = time.perf_counter() - start
    level.server_cpu = server.cpu_seconds() - server_cpu
    level.client_cpu = time.process_time() - client_cpu
    return level


# ----------------------------------------------------------------------------- the report
def machine() -> str:
    cpu = cpu_name()
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    try:
        commit = subprocess.run(
            ["git", "describe", "--always", "--dirty"], capture_output=True, text=True, check=True
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        commit = "?"
    return f"{cpu}, {cpus} CPUs, Python {platform.python_version()}, commit {commit}"


def load_average() -> str:
    return " ".join(f"{v:.1f}" for v in os.getloadavg())


def bench_model(model: str, body: bytes, args: argparse.Namespace) -> None:
    server = Server.start(model, shlex.split(args.serve_args))
    try:
        print(f"\n### {model} (`ferkit serve {args.serve_args}`), load average {load_average()} at the start")
        print(
            "\n| clients | answers | 200 | 503 | other | 200s/s | p50 ms | p95 ms | p99 ms | slowest 503 ms "
            "| server CPU ms per 200 | client CPU ms per answer | server RSS MiB |"
        )
        print("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
        run_level(server, body, 1, 5, 60)  # warm-up
        for concurrency in args.concurrency:
            level = run_level(server, body, concurrency, args.requests, args.seconds)
            print(level.row(server.memory_mb()), flush=True)
        if args.soak:
            soak(server, body, args.soak, args.soak_seconds)
        print(f"\npeak RSS {server.memory_mb('VmHWM'):.0f} MiB; load average {load_average()} at the end")
    finally:
        server.stop()


def soak(server: Server, body: bytes, requests: int, seconds: float) -> None:
    """`requests` at concurrency 16, the server's RSS read every SOAK_STEP answers."""
    readings, done, deadline = [f"{server.memory_mb():.0f}"], 0, time.monotonic() + seconds
    while done < requests and time.monotonic() < deadline:
        step = min(SOAK_STEP, requests - done)
        level = run_level(server, body, SOAK_CONCURRENCY, step, deadline - time.monotonic())
        done += len(level.answers)
        readings.append(f"{server.memory_mb():.0f}")
    print(
        f"\nsoak: {done} requests at concurrency {SOAK_CONCURRENCY}, server RSS MiB every {SOAK_STEP}: "
        + " -> ".join(readings)
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", nargs="+", default=["ferkit-fer2013-fast", "ferkit-fer2013"])
    parser.add_argument("--concurrency", nargs="+", type=int, default=[1, 16, 64])
    parser.add_argument("--requests", type=int, default=400, help="answers per level at most")
    parser.add_argument("--seconds", type=float, default=60, help="seconds per level at most")
    parser.add_argument("--soak", type=int, default=2000, help="requests at concurrency 16 (0: none)")
    parser.add_argument("--soak_seconds", type=float, default=300)
    parser.add_argument("--photo", help="a photo to send instead (resized to 512x512)")
    parser.add_argument("--serve_args", default="--device cpu", help="more `ferkit serve` options")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        body = multipart(make_photo(Path(tmp) / "photo.jpg", args.photo))
    print(f"{time.strftime('%Y-%m-%d %H:%M')}: {machine()}")
    print(f"one {SIDE}x{SIDE} JPEG with one face, {len(body):,} bytes a request, loopback only")
    for model in args.models:
        bench_model(model, body, args)


if __name__ == "__main__":
    main()
