"""``bgad serve``: the JSON API (through an in-process client) and the web page (in a real headless browser)."""

import base64
import io
import json
import re
import shutil
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from importlib import resources
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from bgad import BGAD
from bgad.app.review import review_order
from bgad.app.serve import Scorer, create_app, model_description
from bgad.method.thresholds import NormalTail, Thresholds, normalized_score, threshold_for_fpr

pytestmark = pytest.mark.slow
testclient = pytest.importorskip("fastapi.testclient", reason="bgad serve needs its extra: pip install 'bgad[serve]'")

BOTTLE = (
    Path(__file__).resolve().parents[2]
    / "shared"
    / "data"
    / "mvtec_ad"
    / "bottle"
    / "test"
    / "broken_large"
    / "000.png"
)
LOCAL = "http://127.0.0.1:8000"  # the Host the server answers to (create_app's Host check)


@pytest.fixture(scope="module")
def scorer(tiny_run: Path) -> Scorer:
    detector = BGAD.load(tiny_run)
    return Scorer(detector, model_description(tiny_run, detector), max_pixels=1_000_000)


@pytest.fixture(scope="module")
def client(scorer: Scorer) -> Iterator[object]:
    with testclient.TestClient(create_app(scorer, max_upload_bytes=200_000), base_url=LOCAL) as test_client:
        yield test_client


def _png(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG")
    return buffer.getvalue()


@pytest.fixture(scope="module")
def image_bytes(tiny_dataset: Path) -> bytes:
    return (tiny_dataset / "part" / "test" / "crack" / "000.png").read_bytes()


def test_health_model_and_schema(client, tiny_run: Path) -> None:
    assert client.get("/health").json()["status"] == "ok"
    model = client.get("/model").json()
    assert model["thresholds"] == pytest.approx(BGAD.load(tiny_run).thresholds_._asdict())
    assert model["training_metrics"]["n_known_anomalies"] == 3
    assert {"/predict", "/predict/batch", "/health", "/model"} <= set(client.get("/openapi.json").json()["paths"])
    page = client.get("/")
    assert page.status_code == 200
    assert 'id="imageThreshold"' in page.text


def test_predict_matches_the_detector(client, tiny_run: Path, image_bytes: bytes) -> None:
    expected = BGAD.load(tiny_run).predict(Image.open(io.BytesIO(image_bytes)))
    for response in (
        client.post("/predict", files={"file": ("a.png", image_bytes, "image/png")}),
        client.post("/predict", content=image_bytes, headers={"content-type": "image/png"}),
    ):
        assert response.status_code == 200, response.text
        result = response.json()
        assert result["score"] == pytest.approx(expected.score, rel=1e-5)
        assert result["is_anomalous"] == expected.is_anomalous
        assert result["normalized_score"] == pytest.approx(expected.normalized_score, rel=1e-5)
        assert result["timing_ms"]["total"] >= result["timing_ms"]["inference"] > 0


def test_maps_as_png_and_raw(client, image_bytes: bytes) -> None:
    png = client.post("/predict?maps=png", files={"file": ("a.png", image_bytes, "image/png")}).json()
    size = (png["image"]["width"], png["image"]["height"])
    for key in ("overlay_png", "mask_png"):
        with Image.open(io.BytesIO(base64.b64decode(png[key]))) as picture:
            assert picture.size == size
    raw = client.post("/predict?maps=raw", files={"file": ("a.png", image_bytes, "image/png")}).json()["anomaly_map"]
    values = np.frombuffer(base64.b64decode(raw["data"]), dtype="<f4")
    assert values.size == raw["width"] * raw["height"]
    assert values.max() == pytest.approx(png["score"], rel=0.05)  # the map's peak is the score (resampled)


@pytest.mark.parametrize(
    ("kwargs", "status", "needle"),
    [
        ({"files": {"file": ("x.png", b"not an image", "image/png")}}, 400, "cannot read image x.png"),
        ({"files": {"file": ("x.png", b"", "image/png")}}, 400, "empty"),
        ({"content": b"hello", "headers": {"content-type": "text/plain"}}, 415, "unsupported content type"),
        ({"content": b"0" * 300_000, "headers": {"content-type": "image/png"}}, 413, "over the limit"),
        ({"files": {"other": ("x.txt", b"abc", "text/plain")}, "data": {"note": "hi"}}, 400, "cannot read image"),
        ({"data": {"note": "hi"}}, 415, "unsupported content type"),
    ],
)
def test_bad_uploads_are_json_4xx_and_the_server_keeps_serving(
    client, image_bytes: bytes, kwargs: dict, status: int, needle: str
) -> None:
    response = client.post("/predict", **kwargs)
    assert response.status_code == status, response.text
    assert needle in response.json()["error"]
    assert "Traceback" not in response.text
    assert client.post("/predict", content=image_bytes, headers={"content-type": "image/png"}).status_code == 200


@pytest.fixture(scope="module")
def checked(tiny_dataset: Path, tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    """Eight images of the tiny dataset (good and defective) under distinct names, as a user checks them."""
    folder = tmp_path_factory.mktemp("checked")
    test = tiny_dataset / "part" / "test"
    for source in (
        sorted(test.glob("good/*.png")) + sorted(test.glob("crack/*.png"))[:2] + sorted(test.glob("spot/*.png"))[:2]
    ):
        shutil.copy(source, folder / f"{source.parent.name}_{source.name}")
    return sorted(folder.iterdir())


def _expected_review(
    tiny_run: Path, images: list[Path], n: int, thresholds: Thresholds | None = None
) -> list[tuple[str, str]]:
    """(file, reason) of the review list as bgad predict --review ranks it (bgad.app.review.review_order), at the
    model's thresholds or ``thresholds``."""
    detector = BGAD.load(tiny_run)
    predictions = detector.predict_batch(images)
    scores, peaks = [p.score for p in predictions], [float(p.anomaly_map.max()) for p in predictions]
    order = review_order(scores, peaks, thresholds or detector.thresholds_, n)
    return [(images[i].name, reason) for i, reason, _ in order]


def test_review_ranks_the_checked_images_as_predict_review_does(client, tiny_run: Path, checked: list[Path]) -> None:
    images = []
    for path in checked:
        result = client.post("/predict", files={"file": (path.name, path.read_bytes(), "image/png")}).json()
        images.append({"file": path.name, "score": result["score"], "map_peak": result["map_peak"]})
    # the model's thresholds, then every image judged good and a region above the pixel threshold in each
    for thresholds in (None, Thresholds(image=max(i["score"] for i in images) + 1, pixel=0.0)):
        chosen = (
            {} if thresholds is None else {"image_threshold": thresholds.image, "pixel_threshold": thresholds.pixel}
        )
        response = client.post("/review", json={"images": images, "n": 2} | chosen)
        assert response.status_code == 200, response.text
        listed = response.json()["review"]
        assert [(item["file"], item["reason"]) for item in listed] == _expected_review(tiny_run, checked, 2, thresholds)
        assert all(images[item["index"]]["file"] == item["file"] for item in listed)
    assert response.json()["thresholds"] == thresholds._asdict()
    assert [item["reason"] for item in listed] == ["near threshold"] * 2 + ["hidden region"] * 2
    for bad in ({"images": images, "n": 0}, {"images": [{"file": "a.png"}]}, {"n": 2}):
        response = client.post("/review", json=bad)
        assert response.status_code == 422
        assert "error" in response.json()


def test_too_many_pixels_and_tiny_images_are_refused(client) -> None:
    big = _png(np.zeros((1100, 1000), np.uint8))  # 1.1 MP over the fixture's 1 MP limit, small as a PNG
    assert client.post("/predict", content=big, headers={"content-type": "image/png"}).status_code == 400
    tiny = _png(np.zeros((8, 8, 3), np.uint8))
    response = client.post("/predict", content=tiny, headers={"content-type": "image/png"})
    assert response.status_code == 400
    assert "smaller than the network's stride" in response.json()["error"]
    assert client.get("/health").status_code == 200


def test_batch_scores_the_good_and_reports_the_bad(client, image_bytes: bytes) -> None:
    files = [("file", ("a.png", image_bytes, "image/png")), ("file", ("b.png", b"junk", "image/png"))]
    response = client.post("/predict/batch", files=files)
    assert response.status_code == 200
    first, second = response.json()["results"]
    assert "score" in first
    assert second["file"] == "b.png"
    assert "cannot read image" in second["error"]
    single = client.post("/predict", files=files)
    assert single.status_code == 400
    assert "/predict/batch" in single.json()["error"]


# ----------------------------------------------------------------------------------------------------------------
# The web page in a real browser
# ----------------------------------------------------------------------------------------------------------------


def _browser():
    webdriver = pytest.importorskip("selenium.webdriver", reason="the browser test needs selenium (bgad[dev])")
    binary = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
    driver_path = shutil.which("chromedriver")
    if binary is None or driver_path is None:
        pytest.skip("no headless browser here: apt-get install -y chromium chromium-driver")
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = binary
    for argument in (
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--window-size=1400,1000",
    ):
        options.add_argument(argument)
    return webdriver.Chrome(service=Service(executable_path=driver_path), options=options)


@pytest.fixture(scope="module")
def server(scorer: Scorer) -> Iterator[str]:
    import uvicorn

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    instance = uvicorn.Server(uvicorn.Config(create_app(scorer), host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=instance.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not instance.started and time.monotonic() < deadline:
        time.sleep(0.05)
    yield f"http://127.0.0.1:{port}/"
    instance.should_exit = True
    thread.join(timeout=10)


def test_the_page_scores_an_upload_and_the_slider_changes_the_verdict(
    server: str, tiny_dataset: Path, tmp_path: Path
) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.support.ui import WebDriverWait

    image = BOTTLE if BOTTLE.is_file() else tiny_dataset / "part" / "test" / "crack" / "000.png"
    driver = _browser()
    try:
        driver.get(server)
        wait = WebDriverWait(driver, 60)
        wait.until(lambda d: "model " in d.find_element(By.ID, "model").text)
        driver.find_element(By.ID, "files").send_keys(str(image))
        wait.until(lambda d: d.find_element(By.ID, "verdict").text in ("GOOD", "ANOMALOUS"))
        assert driver.find_element(By.ID, "error").text == ""
        rows = driver.find_elements(By.CSS_SELECTOR, "#rows tr")
        assert len(rows) == 1
        assert image.name in rows[0].text
        slider = driver.find_element(By.ID, "imageThreshold")
        slider.send_keys(Keys.HOME)  # the lowest image threshold: every image is anomalous
        wait.until(lambda d: d.find_element(By.ID, "verdict").text == "ANOMALOUS")
        assert "anomalous" in driver.find_element(By.CSS_SELECTOR, "#rows tr").text
        slider.send_keys(Keys.END)  # above every score seen: the image is good
        wait.until(lambda d: d.find_element(By.ID, "verdict").text == "GOOD")
        assert "good" in driver.find_element(By.CSS_SELECTOR, "#rows tr").text
        screenshot = tmp_path / "page.png"
        driver.save_screenshot(str(screenshot))
        with Image.open(screenshot) as shot:
            pixels = np.asarray(shot.convert("RGB"))
        assert pixels.std() > 10  # the page drew something: the image, the heatmap, the controls
        logs = [entry for entry in driver.get_log("browser") if entry["level"] == "SEVERE"]
        assert not logs, json.dumps(logs)
    finally:
        driver.quit()


def test_the_page_lists_what_to_review_in_the_order_of_predict_review(
    server: str, tiny_run: Path, checked: list[Path], tmp_path: Path
) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.support.ui import WebDriverWait

    def listed(d) -> list[tuple[str, str]]:  # read in one script: the list is redrawn while thresholds change
        rows = "return [...document.querySelectorAll('#review tr')].map((r) => [...r.cells].map((c) => c.textContent))"
        return [(cells[1], cells[2]) for cells in d.execute_script(rows)]

    driver = _browser()
    try:
        driver.get(server)
        wait = WebDriverWait(driver, 60)
        wait.until(lambda d: "model " in d.find_element(By.ID, "model").text)
        for count, image in enumerate(checked, start=1):
            driver.find_element(By.ID, "files").send_keys(str(image))
            wait.until(lambda d, n=count: len(d.find_elements(By.CSS_SELECTOR, "#rows tr")) == n)
        count = driver.find_element(By.ID, "reviewCount")
        count.clear()
        count.send_keys("2")
        expected = _expected_review(tiny_run, checked, 2)
        wait.until(lambda d: listed(d) == expected, message=f"expected {expected}")
        # every image judged good, a region above the pixel threshold in each: the hidden regions are listed too
        driver.find_element(By.ID, "imageThreshold").send_keys(Keys.END)
        driver.find_element(By.ID, "pixelThreshold").send_keys(Keys.HOME)
        read = "return [+arguments[0].value, +arguments[1].value]"
        sliders = [driver.find_element(By.ID, name) for name in ("imageThreshold", "pixelThreshold")]
        image_threshold, pixel_threshold = driver.execute_script(read, *sliders)
        expected = _expected_review(tiny_run, checked, 2, Thresholds(image_threshold, pixel_threshold))
        assert [reason for _, reason in expected] == ["near threshold"] * 2 + ["hidden region"] * 2
        wait.until(lambda d: listed(d) == expected, message=f"expected {expected}")
        driver.find_elements(By.CSS_SELECTOR, "#review tr")[-1].click()
        wait.until(lambda d: d.find_element(By.ID, "scoreline").text.startswith(expected[-1][0]))
        assert driver.find_element(By.ID, "error").text == ""
        driver.save_screenshot(str(tmp_path / "review.png"))
        logs = [entry for entry in driver.get_log("browser") if entry["level"] == "SEVERE"]
        assert not logs, json.dumps(logs)
    finally:
        driver.quit()


def test_the_onnx_engine_serves_the_same_scores(tiny_run: Path, tmp_path: Path, image_bytes: bytes, client) -> None:
    from bgad.deploy.export import OnnxDetector, export_onnx

    onnx_file = export_onnx(BGAD.load(tiny_run), tmp_path / "model.onnx")
    detector = OnnxDetector.load(onnx_file)
    description = model_description(onnx_file, detector)
    assert description["engine"] == "onnx"
    app = create_app(Scorer(detector, description, max_pixels=1_000_000))
    with testclient.TestClient(app, base_url=LOCAL) as onnx_client:
        onnx = onnx_client.post("/predict", content=image_bytes, headers={"content-type": "image/png"}).json()
    torch_result = client.post("/predict", content=image_bytes, headers={"content-type": "image/png"}).json()
    assert onnx["score"] == pytest.approx(torch_result["score"], abs=2e-5)
    assert onnx["is_anomalous"] == torch_result["is_anomalous"]


def test_the_pages_normalized_score_is_the_librarys() -> None:
    """The page recomputes normalized scores when the threshold slider moves: its script must agree with
    bgad.method.thresholds.normalized_score, from the tail table /model sends."""
    node = shutil.which("node")
    if node is None:
        pytest.skip("no node to run the page's script")
    page = resources.files("bgad.app").joinpath("static/index.html").read_text(encoding="utf-8")
    functions = [
        re.search(rf"^function {name}\(.*?^\}}$", page, re.MULTILINE | re.DOTALL).group(0)
        for name in ("normalShare", "normalized")
    ]
    normals = np.random.default_rng(0).gamma(3.0, size=150)
    threshold = threshold_for_fpr(normals, 0.01)
    scores = np.concatenate([np.linspace(-1, 25, 300), normals[:20], [threshold]])
    tail = NormalTail(normals).table()
    script = "\n".join(
        [
            f"const state = {{model: {{normal_tail: {json.dumps(tail)}}}}};",
            *functions,
            f"console.log(JSON.stringify({json.dumps(scores.tolist())}.map((s) => normalized(s, {threshold}))));",
        ]
    )
    output = subprocess.run([node, "-e", script], capture_output=True, text=True, check=True).stdout
    np.testing.assert_allclose(json.loads(output), normalized_score(scores, threshold, normals), atol=1e-9)
