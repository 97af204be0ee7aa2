"""Load on ``bgad serve``: requests per second and latency percentiles for 1, 4 and 16 concurrent clients.

Starts ``bgad serve`` as its own process on a free local port, then each client thread posts the same image to
/predict in a loop (httpx, one connection per client). Run on an idle machine:

    python benchmarks/serve_load.py --run RUN --image IMAGE [--requests 40] [--clients 1,4,16]
"""

import argparse
import statistics
import threading
import time
from pathlib import Path

import httpx
from local_server import local_server


def _load(url: str, image: bytes, clients: int, per_client: int) -> dict[str, float]:
    latencies: list[float] = []
    failures = 0
    lock = threading.Lock()

    def client() -> None:
        nonlocal failures
        with httpx.Client(timeout=120) as session:
            for _ in range(per_client):
                start = time.perf_counter()
                response = session.post(url, content=image, headers={"content-type": "image/png"})
                elapsed = time.perf_counter() - start
                with lock:
                    latencies.append(elapsed)
                    failures += response.status_code != 200

    threads = [threading.Thread(target=client) for _ in range(clients)]
    start = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    wall = time.perf_counter() - start
    ordered = sorted(latencies)
    return {
        "clients": clients,
        "requests": len(latencies),
        "failures": failures,
        "requests_per_s": len(latencies) / wall,
        "p50_ms": 1000 * statistics.median(ordered),
        "p99_ms": 1000 * ordered[min(len(ordered) - 1, round(0.99 * (len(ordered) - 1)))],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", type=Path, required=True)
    parser.add_argument("--image", type=Path, required=True)
    parser.add_argument("--requests", type=int, default=40, help="requests per client count, split over the clients")
    parser.add_argument("--clients", default="1,4,16")
    args = parser.parse_args()
    with local_server(args.run) as (_, base):
        image = args.image.read_bytes()
        _load(f"{base}/predict", image, 1, 3)  # warm-up
        print("| clients | requests | requests/s | p50 latency (ms) | p99 latency (ms) | failures |")
        print("|---:|---:|---:|---:|---:|---:|")
        for clients in map(int, args.clients.split(",")):
            r = _load(f"{base}/predict", image, clients, max(1, args.requests // clients))
            print(
                f"| {clients} | {r['requests']} | {r['requests_per_s']:.2f} | {r['p50_ms']:.0f} | {r['p99_ms']:.0f} "
                f"| {r['failures']} |",
                flush=True,
            )


if __name__ == "__main__":
    main()
