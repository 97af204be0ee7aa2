"""``bgad serve`` against hostile clients: body limits counted while the body streams, the body-read timeout, the
memory budget of images being scored, and the Host check (DNS rebinding)."""

import asyncio
import itertools
import json
import socket
import threading
import time
from collections.abc import Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from bgad import BGAD
from bgad.app.serve import BYTES_PER_PIXEL, MAX_REVIEW_BYTES, MAX_REVIEWED, Scorer, create_app, host_check
from bgad.app.serve import model_description as describe

pytestmark = pytest.mark.slow
testclient = pytest.importorskip("fastapi.testclient", reason="bgad serve needs its extra: pip install 'bgad[serve]'")

LOCAL = "http://127.0.0.1:8000"
LIMIT = 200_000  # max_upload_bytes of these apps
CHUNK = 65_536


@pytest.fixture(scope="module")
def scorer(tiny_run: Path) -> Scorer:
    detector = BGAD.load(tiny_run)
    return Scorer(detector, describe(tiny_run, detector), max_pixels=1_000_000)


@pytest.fixture(scope="module")
def image_bytes(tiny_dataset: Path) -> bytes:
    return (tiny_dataset / "part" / "test" / "crack" / "000.png").read_bytes()  # 64 x 64


def _app(scorer: Scorer, **options: object) -> object:
    return create_app(scorer, max_upload_bytes=LIMIT, max_review_bytes=10_000, **options)


def _asgi_post(app: object, path: str, content_type: str, chunks: Iterable[bytes], *, end: bool = True) -> tuple:
    """POST ``chunks`` straight to the ASGI app as a chunked body (no Content-Length), one ``receive`` each; after
    the last, the body ends (``end``) or the client stops sending. Returns the status, the JSON answer and how
    many chunks the app pulled."""
    pulled, sent = 0, []
    source = iter(chunks)

    async def receive() -> dict:
        nonlocal pulled
        chunk = next(source, None)
        if chunk is None and not end:
            await asyncio.sleep(3600)  # a client that stopped sending
        if chunk is None:
            return {"type": "http.request", "body": b"", "more_body": False}
        pulled += 1
        return {"type": "http.request", "body": chunk, "more_body": True}

    async def send(message: dict) -> None:
        sent.append(message)

    headers = [(b"host", b"127.0.0.1:8000"), (b"content-type", content_type.encode())]
    scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "POST", "scheme": "http"}
    scope |= {"path": path, "raw_path": path.encode(), "query_string": b"", "root_path": "", "headers": headers}
    scope |= {"client": ("127.0.0.1", 50000), "server": ("127.0.0.1", 8000)}
    asyncio.run(app(scope, receive, send))
    status = next(m["status"] for m in sent if m["type"] == "http.response.start")
    body = b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")
    return status, json.loads(body), pulled


def _multipart_start(name: str = "big.png") -> bytes:
    return (
        b'--xyz\r\nContent-Disposition: form-data; name="file"; filename="' + name.encode() + b'"\r\n'
        b"Content-Type: image/png\r\n\r\n"
    )


@pytest.mark.parametrize(
    ("path", "content_type", "first", "limit"),
    [
        ("/predict", "image/png", b"", LIMIT),
        ("/predict", "multipart/form-data; boundary=xyz", _multipart_start(), LIMIT),
        ("/predict/batch", "multipart/form-data; boundary=xyz", _multipart_start(), 64 * LIMIT),
        ("/review", "application/json", b'{"images": [', 10_000),
    ],
)
def test_a_chunked_body_over_its_limit_is_refused_as_it_streams(
    scorer: Scorer, path: str, content_type: str, first: bytes, limit: int
) -> None:
    size = min(CHUNK, limit // 8)
    chunks = itertools.chain([first], itertools.repeat(b"0" * size, 4 * limit // size))
    status, answer, pulled = _asgi_post(_app(scorer), path, content_type, chunks)
    assert status == 413
    assert f"over the limit of {limit} bytes" in answer["error"]
    assert pulled == (limit - len(first)) // size + 2  # stopped at the first chunk past the limit


def test_a_chunked_upload_under_the_limit_is_scored(scorer: Scorer, image_bytes: bytes) -> None:
    def chunked() -> Iterator[bytes]:  # a generator body: httpx sends it chunked, without a Content-Length
        yield from (image_bytes[i : i + 100] for i in range(0, len(image_bytes), 100))

    with testclient.TestClient(_app(scorer), base_url=LOCAL) as client:
        response = client.post("/predict", content=chunked(), headers={"content-type": "image/png"})
    assert response.status_code == 200, response.text
    assert response.json()["image"] == {"width": 64, "height": 64}


def test_review_has_a_body_limit_that_holds_a_full_review(scorer: Scorer) -> None:
    images = [{"file": "x" * 1000, "score": 1.0, "map_peak": 1.0}] * 10
    with testclient.TestClient(_app(scorer), base_url=LOCAL) as client:
        response = client.post("/review", json={"images": images})
    assert response.status_code == 413
    assert "over the limit of 10000" in response.json()["error"]
    # the default limit holds MAX_REVIEWED images named with 100 characters, scores written out in full
    longest = {"file": "x" * 100, "score": -1.2345678901234567e-05, "map_peak": -1.2345678901234567e-05}
    assert len(json.dumps({"images": [longest] * MAX_REVIEWED, "n": MAX_REVIEWED}).encode()) < MAX_REVIEW_BYTES


def test_a_body_that_stops_arriving_gets_a_408(scorer: Scorer) -> None:
    start = time.monotonic()
    status, answer, pulled = _asgi_post(_app(scorer, body_timeout_s=0.3), "/predict", "image/png", [b"0"], end=False)
    assert (status, pulled) == (408, 1)
    assert "stopped arriving for 0.3 s" in answer["error"]
    assert time.monotonic() - start < 5


@pytest.fixture(scope="module")
def server(scorer: Scorer) -> Iterator[int]:
    """A real uvicorn server on a free loopback port (limits of :func:`_app`, a 0.5 s body timeout)."""
    import uvicorn

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    config = uvicorn.Config(_app(scorer, body_timeout_s=0.5), host="127.0.0.1", port=port, log_level="warning")
    instance = uvicorn.Server(config)
    thread = threading.Thread(target=instance.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not instance.started and time.monotonic() < deadline:
        time.sleep(0.05)
    yield port
    instance.should_exit = True
    thread.join(timeout=10)


def _answer(connection: socket.socket, request: bytes) -> bytes:
    """Send ``request`` raw and read the answer, up to the end of its JSON body."""
    connection.sendall(request)
    answer = b""
    while not answer.endswith(b"}") and (chunk := connection.recv(65536)):
        answer += chunk
    return answer


def test_over_the_wire_a_stalled_body_is_a_408_and_the_connection_closes(server: int) -> None:
    head = b"POST /predict HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: image/png\r\nContent-Length: 5000\r\n\r\n"
    start = time.monotonic()
    with socket.create_connection(("127.0.0.1", server), timeout=10) as connection:
        answer = _answer(connection, head + b"0" * 100)  # 100 of the 5000 bytes, then silence
        assert connection.recv(1) == b""  # closed by the server
    assert answer.startswith(b"HTTP/1.1 408")
    assert b"connection: close" in answer.lower()
    assert b"stopped arriving" in answer
    assert time.monotonic() - start < 8  # answered after the server's 0.5 s, not this client's 10 s timeout


def test_over_the_wire_a_chunked_upload_is_refused_at_its_limit(server: int) -> None:
    head = b"POST /predict HTTP/1.1\r\nHost: localhost\r\nContent-Type: image/png\r\nTransfer-Encoding: chunked\r\n\r\n"
    chunk = f"{CHUNK:x}\r\n".encode() + b"0" * CHUNK + b"\r\n"
    with socket.create_connection(("127.0.0.1", server), timeout=10) as connection:
        answer = _answer(connection, head + chunk * (2 * LIMIT // CHUNK))  # stops mid-body: the 413 came first
    assert answer.startswith(b"HTTP/1.1 413")
    assert b"over the limit of 200000 bytes" in answer


# ----------------------------------------------------------------------------------------------------------------
# The memory budget of images being scored
# ----------------------------------------------------------------------------------------------------------------


def test_a_request_waits_for_its_share_of_the_budget_then_gets_a_503(scorer: Scorer, image_bytes: bytes) -> None:
    share = 64 * 64 * BYTES_PER_PIXEL
    assert scorer.memory_needed(image_bytes) == share
    app = _app(scorer, memory_budget_bytes=share, budget_wait_s=0.3)
    budget = app.state.budget
    with testclient.TestClient(app, base_url=LOCAL) as client:
        post = {"content": image_bytes, "headers": {"content-type": "image/png"}}
        with client.portal.wrap_async_context_manager(budget.share(share)):  # another image holds the budget
            start = time.monotonic()
            refused = client.post("/predict", **post)
            assert time.monotonic() - start >= 0.3
            assert budget.held == share
        assert refused.status_code == 503
        assert "memory budget" in refused.json()["error"]
        assert budget.held == 0
        assert client.post("/predict", **post).status_code == 200
        assert budget.held == 0


def test_a_waiting_request_is_scored_once_the_budget_frees(scorer: Scorer, image_bytes: bytes) -> None:
    share = scorer.memory_needed(image_bytes)
    app = _app(scorer, memory_budget_bytes=share, budget_wait_s=30)
    with testclient.TestClient(app, base_url=LOCAL) as client:
        held = client.portal.wrap_async_context_manager(app.state.budget.share(share))
        held.__enter__()
        threading.Timer(0.5, held.__exit__, (None, None, None)).start()
        start = time.monotonic()
        response = client.post("/predict", content=image_bytes, headers={"content-type": "image/png"})
        assert response.status_code == 200
        assert time.monotonic() - start >= 0.5
        assert app.state.budget.held == 0


def test_the_budget_bounds_how_many_images_are_scored_at_once(
    scorer: Scorer, image_bytes: bytes, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Six parallel uploads, a budget of 1.5 images: one image at a time between decoding and the answer; an
    image larger than the whole budget is scored too (alone); a failed decode frees its share."""
    active, most = 0, 0
    lock = threading.Lock()
    score = scorer.score

    def slow_score(*args: object) -> dict:
        nonlocal active, most
        with lock:
            active += 1
            most = max(most, active)
        time.sleep(0.1)
        try:
            return score(*args)
        finally:
            with lock:
                active -= 1

    monkeypatch.setattr(scorer, "score", slow_score)
    share = scorer.memory_needed(image_bytes)
    for budget_bytes, expected in ((share * 3 // 2, 1), (share // 2, 1), (share * 10, 6)):
        active, most = 0, 0
        app = _app(scorer, memory_budget_bytes=budget_bytes)
        with testclient.TestClient(app, base_url=LOCAL) as client:

            def post(_: int, client: object = client) -> int:
                return client.post("/predict", content=image_bytes, headers={"content-type": "image/png"}).status_code

            with ThreadPoolExecutor(6) as pool:
                assert list(pool.map(post, range(6))) == [200] * 6
            truncated = image_bytes[: len(image_bytes) // 2]  # its header says 64 x 64; its pixels are cut
            assert client.post("/predict", content=truncated, headers={"content-type": "image/png"}).status_code == 400
        assert most == expected, budget_bytes
        assert app.state.budget.held == 0


# ----------------------------------------------------------------------------------------------------------------
# The Host check (DNS rebinding)
# ----------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("bind", "served", "refused"),
    [
        (
            "127.0.0.1",
            ["127.0.0.1:8000", "localhost", "LocalHost:1", "[::1]:8000", "127.0.0.1"],
            ["evil.example", "evil.example:8000", "127.0.0.1.evil.example", "", "localhost@evil", "192.168.1.20"],
        ),
        ("::1", ["[::1]", "localhost:8000"], ["[::2]", "evil.example"]),
        ("inspect.lan", ["inspect.lan:8000", "INSPECT.LAN", "localhost"], ["evil.example", "lan"]),
        (
            "0.0.0.0",
            ["192.168.1.20:8000", "[fe80::1]:8000", socket.gethostname(), "localhost"],
            ["evil.example", "192.168.1.20.evil.example", ""],
        ),
    ],
)
def test_only_a_host_of_this_server_is_served(bind: str, served: list[str], refused: list[str]) -> None:
    check = host_check(bind)
    assert [host for host in served if not check(host)] == []
    assert [host for host in refused if check(host)] == []


def test_a_request_for_another_host_is_a_json_400(scorer: Scorer, image_bytes: bytes) -> None:
    with testclient.TestClient(_app(scorer), base_url="http://evil.example:8000") as client:
        for response in (
            client.get("/model"),
            client.post("/predict", content=image_bytes, headers={"content-type": "image/png"}),
        ):
            assert response.status_code == 400
            assert "not this server's address" in response.json()["error"]
        local = client.get("/health", headers={"host": "localhost:8000"})
        assert local.status_code == 200
