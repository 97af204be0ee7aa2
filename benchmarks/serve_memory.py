"""Peak memory of ``bgad serve`` under hostile loads (issue #23): the server's VmHWM and VmRSS (/proc).

Each load runs against a fresh ``bgad serve`` process on a free local port:

* ``images``: ten parallel POSTs of a 7000 x 7000 16-bit PNG (49 MP, under the 50 MP limit) to /predict;
* ``upload``: one chunked multipart upload (no Content-Length) of ``--upload-mb`` MB to /predict;
* ``review``: one chunked JSON body of ``--review-mb`` MB to /review.

    python benchmarks/serve_memory.py --run RUN [--upload-mb 300] [--review-mb 200]

Run it with PYTHONPATH pointing at another checkout's ``src`` to measure that version.
"""

import argparse
import io
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
from local_server import local_server
from PIL import Image

MB = 1024 * 1024


def _memory_mb(pid: int) -> dict[str, int]:
    fields = dict(line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines())
    return {key: int(fields[key].split()[0]) // 1024 for key in ("VmHWM", "VmRSS")}


def _big_png() -> bytes:
    path = Path(tempfile.gettempdir()) / "bgad_7000x7000_16bit.png"
    if not path.is_file():
        ramp = np.add.outer(np.arange(7000, dtype=np.uint32), np.arange(7000, dtype=np.uint32)) * 4
        buffer = io.BytesIO()
        Image.fromarray(ramp.astype(np.uint16)).save(buffer, format="PNG")
        path.write_bytes(buffer.getvalue())
    return path.read_bytes()


def _chunks(head: bytes, filler: bytes, megabytes: int, tail: bytes) -> Iterator[bytes]:
    yield head
    for _ in range(megabytes * MB // len(filler)):
        yield filler
    yield tail


def _images(url: str, _: argparse.Namespace) -> list[int]:
    image, statuses = _big_png(), []

    def post() -> None:
        response = httpx.post(f"{url}/predict", content=image, headers={"content-type": "image/png"}, timeout=600)
        statuses.append(response.status_code)

    threads = [threading.Thread(target=post) for _ in range(10)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return statuses


def _upload(url: str, args: argparse.Namespace) -> list[int]:
    head = b'--xyz\r\nContent-Disposition: form-data; name="file"; filename="big.png"\r\n'
    head += b"Content-Type: image/png\r\n\r\n"
    body = _chunks(head, b"\0" * MB, args.upload_mb, b"\r\n--xyz--\r\n")
    headers = {"content-type": "multipart/form-data; boundary=xyz"}
    return [httpx.post(f"{url}/predict", content=body, headers=headers, timeout=600).status_code]


def _review(url: str, args: argparse.Namespace) -> list[int]:
    item = b'{"file": "000.png", "score": 1.2345678901234567, "map_peak": 1.2345678901234567},'
    filler = item * (MB // len(item))
    body = _chunks(b'{"images": [', filler, args.review_mb, item[:-1] + b"]}")
    headers = {"content-type": "application/json"}
    return [httpx.post(f"{url}/review", content=body, headers=headers, timeout=600).status_code]


LOADS = {"images": _images, "upload": _upload, "review": _review}


def _measure(run: Path, load: str, args: argparse.Namespace) -> str:
    with local_server(run) as (server, url):
        idle = _memory_mb(server.pid)["VmRSS"]
        start = time.perf_counter()
        statuses = LOADS[load](url, args)
        seconds = time.perf_counter() - start
        time.sleep(1)
        after = _memory_mb(server.pid)
    codes = ", ".join(f"{statuses.count(code)}× {code}" for code in sorted(set(statuses)))
    return f"| {load} | {idle} | {after['VmHWM']} | {after['VmRSS']} | {codes} | {seconds:.1f} |"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", type=Path, required=True)
    parser.add_argument("--upload-mb", type=int, default=300)
    parser.add_argument("--review-mb", type=int, default=200)
    parser.add_argument("--loads", default=",".join(LOADS))
    args = parser.parse_args()
    print("| load | idle RSS (MB) | peak RSS (MB) | RSS after (MB) | answers | seconds |")
    print("|---|---:|---:|---:|---|---:|")
    for load in args.loads.split(","):
        print(_measure(args.run, load, args), flush=True)


if __name__ == "__main__":
    main()
