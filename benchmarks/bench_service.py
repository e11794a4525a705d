"""Service throughput: requests/s and latency p50/p99 of `POST /predict` under a bounded load.

The service (`stlser serve`, uvicorn) runs in a child process on 127.0.0.1 and a free port;
this process sends a fixed number of requests (a 3 s WAV each) from `concurrency` client
threads, then stops. Traffic never leaves the loopback interface, and the load is bounded in
count and time. Served: the shipped default model (`base.pt`, `base.onnx`), and a default-size
network with random weights (`model.pt`) and its ONNX export. For the default model, one
10-minute upload then measures the server's peak memory.
"""

from __future__ import annotations

import io
import socket
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks import benchlib as bl

SIZES = {
    "quick": {
        "requests": 12,
        "concurrency": [1, 4],
        "clip_s": 1.0,
        "onnx": False,
        "deadline_s": 120,
        "long_minutes": 1.0,
    },
    "full": {
        "requests": 200,
        "concurrency": [1, 4, 16],
        "clip_s": 3.0,
        "onnx": True,
        "deadline_s": 300,
        "long_minutes": 10.0,
    },
}
GOAL_LONG_MB = 500.0  # server RSS after a 10-minute upload, default model


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wav_bytes(seconds: float) -> bytes:
    import soundfile as sf

    x = bl.speechlike(seconds, np.random.default_rng(0), lead=0.0)
    buf = io.BytesIO()
    sf.write(buf, x, 16000, format="WAV", subtype="PCM_16")
    return buf.getvalue()


def _server_rss_mb(pid: int) -> tuple[float, float]:
    """(current, peak) resident set size of the server process (VmRSS, VmHWM), MB."""
    got = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, rest = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            got[key] = int(rest.split()[0]) / 1024
    return got.get("VmRSS", float("nan")), got.get("VmHWM", float("nan"))


def long_upload(url: str, pid: int, body: bytes) -> dict[str, Any]:
    """One POST /predict of a long WAV: status, seconds, server RSS before and peak after."""
    import httpx

    before, _ = _server_rss_mb(pid)
    t0 = time.perf_counter()
    r = httpx.post(
        url + "/predict", content=body, headers={"content-type": "audio/wav"}, timeout=600
    )
    took = time.perf_counter() - t0
    _, peak = _server_rss_mb(pid)
    return {"status": r.status_code, "seconds": took, "before_mb": before, "peak_mb": peak}


def _wait_ready(url: str, proc: subprocess.Popen, timeout: float = 60.0) -> None:
    import httpx

    t0 = time.time()
    while time.time() - t0 < timeout:
        if proc.poll() is not None:
            raise RuntimeError(f"service exited with code {proc.returncode}")
        try:
            if httpx.get(url + "/health", timeout=2.0).status_code == 200:
                return
        except httpx.HTTPError:
            time.sleep(0.2)
    raise TimeoutError("service did not become ready")


def load_test(
    url: str, body: bytes, requests: int, concurrency: int, deadline_s: float
) -> dict[str, Any]:
    """Send `requests` POST /predict from `concurrency` threads; stop early at the deadline."""
    import httpx

    t_end = time.time() + deadline_s
    lat: list[float] = []
    errors = 0

    def worker(n: int) -> None:
        nonlocal errors
        with httpx.Client(base_url=url, timeout=30.0) as c:
            for _ in range(n):
                if time.time() > t_end:
                    return
                t0 = time.perf_counter()
                r = c.post("/predict", content=body, headers={"content-type": "audio/wav"})
                lat.append(time.perf_counter() - t0)
                if r.status_code != 200:
                    errors += 1

    per = [requests // concurrency + (i < requests % concurrency) for i in range(concurrency)]
    t0 = time.perf_counter()
    with ThreadPoolExecutor(concurrency) as ex:
        list(ex.map(worker, per))
    wall = time.perf_counter() - t0
    s = bl.stats(lat) if lat else {"median": float("nan"), "p99": float("nan"), "n": 0}
    return {
        "n": len(lat),
        "errors": errors,
        "rps": len(lat) / wall,
        "p50": s["median"],
        "p99": s["p99"],
    }


def main(quick: bool = False, **overrides: Any) -> str:
    """Run the service benchmark; return its markdown section."""
    z = bl.sizes(SIZES, quick, overrides)
    load = bl.load_text()
    body = _wav_bytes(z["clip_s"])
    rows: list[list[Any]] = []
    long_rows: list[list[Any]] = []
    with tempfile.TemporaryDirectory(prefix="stlser-bench-svc-") as td:
        tmp = Path(td)
        long_body = bl.write_long_wav(tmp / "long.wav", z["long_minutes"], seed=1).read_bytes()
        from importlib import resources

        shipped = resources.files("stlser") / "models"
        models = {
            "default `base`, torch": Path(str(shipped / "base.pt")),
            "default `base`, ONNX": Path(str(shipped / "base.onnx")),
            "network, torch (`model.pt`)": bl.make_artefact(tmp / "model.pt"),
        }
        if not z["onnx"]:
            models.pop("default `base`, ONNX")
        if z["onnx"]:
            # Export as a user would, in a fresh process (`stlser export`): the exporter's
            # tracing state must not depend on what this benchmark process ran before.
            onnx_path = tmp / "model.onnx"
            cmd = [
                sys.executable,
                "-m",
                "stlser.cli",
                "export",
                "--model",
                str(models["network, torch (`model.pt`)"]),
            ]
            subprocess.run(
                [*cmd, "-o", str(onnx_path)], check=True, capture_output=True, timeout=600
            )
            models["network, ONNX Runtime"] = onnx_path
        for name, path in models.items():
            port = _free_port()
            url = f"http://127.0.0.1:{port}"
            cmd = [
                sys.executable,
                "-m",
                "stlser.cli",
                "serve",
                "--model",
                str(path),
                "--port",
                str(port),
                "--max-seconds",
                str(60 * z["long_minutes"] + 60),
                "--max-mb",
                "50",
                # every client thread comes from 127.0.0.1: without these, the per-client and
                # in-flight limits answer 429 / 503 to most concurrent requests
                "--max-uploads",
                "64",
                "--max-uploads-per-client",
                "64",
            ]
            proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            try:
                _wait_ready(url, proc)
                load_test(url, body, 2, 1, 30)  # warm-up
                if name.startswith("default"):
                    r = long_upload(url, proc.pid, long_body)
                    ok = r["status"] == 200 and r["peak_mb"] < GOAL_LONG_MB
                    long_rows.append(
                        [
                            name,
                            r["status"],
                            bl.fmt(r["seconds"]),
                            bl.fmt(r["before_mb"]),
                            bl.fmt(r["peak_mb"]),
                            f"< {GOAL_LONG_MB:g} MB: {'met' if ok else 'NOT met'}",
                        ]
                    )
                for conc in z["concurrency"]:
                    r = load_test(url, body, z["requests"], conc, z["deadline_s"])
                    rows.append(
                        [
                            name,
                            conc,
                            r["n"],
                            r["errors"],
                            bl.fmt(r["rps"]),
                            bl.ms(r["p50"]),
                            bl.ms(r["p99"]),
                        ]
                    )
            finally:
                proc.terminate()
                try:
                    proc.wait(10)
                except subprocess.TimeoutExpired:
                    proc.kill()
    table = bl.md_table(
        ["model", "client threads", "requests", "errors", "requests/s", "p50 ms", "p99 ms"], rows
    )
    table += f"""

One upload of a {z["long_minutes"]:g}-minute 16-bit WAV ({len(long_body) / 1e6:.0f} MB,
speech-like bursts and pauses) to `POST /predict` after the load test: the server's resident
memory before and its peak (VmHWM) after (the server decodes block by block and classifies
20 s windows).

{bl.md_table(["model", "status", "seconds", "RSS before MB", "peak RSS MB", "goal"], long_rows)}
"""
    intro = (
        "`stlser serve --max-uploads 64 --max-uploads-per-client 64` (all client threads share "
        "the address 127.0.0.1; the defaults, 4 in flight and 2 per client, would refuse most "
        "concurrent requests). "
        f"`stlser serve` (uvicorn, one worker process) on 127.0.0.1; `POST /predict` with a "
        f"{z['clip_s']:g} s 16-bit WAV as the raw body; {z['requests']} requests per row from "
        f"concurrent client threads in this process (bounded in count and by a {z['deadline_s']} s "
        f"deadline). Load average at start: {load}."
    )
    return bl.section("Service throughput", intro, table, quick)


if __name__ == "__main__":
    bl.cli(main, __doc__)
