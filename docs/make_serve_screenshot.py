"""The screenshot of ``bgad serve``'s page in the README (docs/images/serve.png).

Run: python docs/make_serve_screenshot.py RUN IMAGE [IMAGE ...]   (needs bgad[serve], selenium, chromium and
chromedriver; it starts the server on a free local port, uploads the images in a headless browser, lists the 3
images nearest the threshold for review, shows the first image and shoots)
"""

import shutil
import socket
import sys
import threading
import time
from pathlib import Path

import uvicorn
from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import WebDriverWait

from bgad import BGAD
from bgad.app.serve import Scorer, create_app, model_description


def main() -> None:
    run, images = Path(sys.argv[1]), [Path(p).resolve() for p in sys.argv[2:]]
    detector = BGAD.load(run)
    app = create_app(Scorer(detector, model_description(run, detector), max_pixels=50_000_000))
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    threading.Thread(target=server.run, daemon=True).start()
    while not server.started:
        time.sleep(0.05)
    options = webdriver.ChromeOptions()
    options.binary_location = shutil.which("chromium")
    for argument in ("--headless=new", "--no-sandbox", "--disable-gpu", "--window-size=1280,1000"):
        options.add_argument(argument)
    driver = webdriver.Chrome(service=Service(executable_path=shutil.which("chromedriver")), options=options)
    try:
        driver.get(f"http://127.0.0.1:{port}/")
        wait = WebDriverWait(driver, 120)
        for count, image in enumerate(images, start=1):
            driver.find_element(By.ID, "files").send_keys(str(image))
            wait.until(lambda d, n=count: len(d.find_elements(By.CSS_SELECTOR, "#rows tr")) == n)
        count = driver.find_element(By.ID, "reviewCount")
        count.clear()
        count.send_keys("3")
        rows = "return [...document.querySelectorAll('#review tr')].map((r) => r.cells[2].textContent)"
        wait.until(lambda d: d.execute_script(rows).count("near threshold") == min(3, len(images)))
        driver.find_elements(By.CSS_SELECTOR, "#rows tr")[0].click()
        output = Path(__file__).parent / "images" / "serve.png"
        driver.save_screenshot(str(output))
        print(f"wrote {output}")
    finally:
        driver.quit()
        server.should_exit = True


if __name__ == "__main__":
    main()
