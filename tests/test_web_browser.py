"""The web page end to end in headless Chromium (Debian's `chromium`; scripts/ensure_chromium.sh installs it): a
real TorchServe serving a small calibrated model with a plausibility gate (on 127.0.0.1), the real web service
(`python -m services.web`) over a LocalStore holding a run's report, and the browser driving the page through the
DevTools protocol over a pipe (--remote-debugging-pipe: no port, no extra package). The test enters the token,
uploads an X-ray and checks the answer in the DOM and the screenshot (the Grad-CAM has colour where the grey X-ray
has none), uploads a colour picture and checks the refusal in plain words, and opens the report page.
"""

from __future__ import annotations

import base64
import contextlib
import io
import json
import os
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import urllib3
from PIL import Image
from service_process import service_process
from storage_server import free_port
from test_classifier_handler import dicom_bytes

from services.classifier.client import register_from_store
from services.classifier.config import ClassifierConfig
from services.classifier.torchserve import TorchServe
from shared import layout
from shared.calibration import Calibration
from shared.cards import dataset_card
from shared.datasets import load_dataset
from shared.models.classifier import build_classifier, classifier_config, classifier_transform, save_classifier
from shared.plausibility import fit_gate
from shared.serving.archive import build_model_archive
from shared.splits import develop_and_holdout
from shared.storage import LocalStore

MODEL = "pneumonia"
RUN = "20261130-120000-quick"
THRESHOLD = 0.42
TOKEN = "operator-" + "0123456789abcdef" * 3
ANY_PORT = {f"{name}_port": 0 for name in ("inference", "management", "metrics", "grpc", "grpc_management")}
WIDTH, HEIGHT = 1200, 1000
TIMEOUT_S = 60.0


# --------------------------------------------------------------------------------------- DevTools over a pipe


class Chromium:
    """Headless Chromium driven over --remote-debugging-pipe (fd 3: our commands, fd 4: its answers and events,
    each JSON message ended by a NUL byte), attached to one page."""

    def __init__(self, profile: Path) -> None:
        to_browser_read, self._to_browser = os.pipe()
        self._from_browser, from_browser_write = os.pipe()
        arguments = [
            "chromium",
            "--headless=new",
            "--remote-debugging-pipe",
            "--no-sandbox",  # root in a container; the page is ours, on 127.0.0.1
            "--disable-gpu",
            "--disable-dev-shm-usage",
            "--no-first-run",
            "--hide-scrollbars",
            f"--user-data-dir={profile}",
            f"--window-size={WIDTH},{HEIGHT}",
            "about:blank",
        ]
        # The shell puts the pipe ends at the fds Chromium expects.
        script = f'exec "$@" 3<&{to_browser_read} 4>&{from_browser_write}'
        self.process = subprocess.Popen(
            ["bash", "-c", script, "chromium", *arguments],
            pass_fds=(to_browser_read, from_browser_write),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        os.close(to_browser_read)
        os.close(from_browser_write)
        self._buffer = b""
        self._next_id = 0
        target = self.call("Target.createTarget", url="about:blank")["targetId"]
        self.session = self.call("Target.attachToTarget", targetId=target, flatten=True)["sessionId"]
        self.page("Emulation.setDeviceMetricsOverride", width=WIDTH, height=HEIGHT, deviceScaleFactor=1, mobile=False)

    def _read_message(self) -> dict[str, Any]:
        while b"\0" not in self._buffer:
            chunk = os.read(self._from_browser, 1 << 16)
            if not chunk:
                raise RuntimeError("chromium closed the DevTools pipe")
            self._buffer += chunk
        message, _, self._buffer = self._buffer.partition(b"\0")
        return json.loads(message)

    def call(self, method: str, session: bool = False, **params: Any) -> dict[str, Any]:
        """Send one command (to the page's session when `session`) and return its result."""
        self._next_id += 1
        message: dict[str, Any] = {"id": self._next_id, "method": method, "params": params}
        if session:
            message["sessionId"] = self.session
        os.write(self._to_browser, json.dumps(message).encode() + b"\0")
        while True:
            answer = self._read_message()
            if answer.get("id") == self._next_id:
                if "error" in answer:
                    raise RuntimeError(f"{method}: {answer['error']}")
                return answer.get("result", {})

    def page(self, method: str, **params: Any) -> dict[str, Any]:
        return self.call(method, session=True, **params)

    def evaluate(self, expression: str) -> Any:
        result = self.page("Runtime.evaluate", expression=expression, returnByValue=True, awaitPromise=True)
        if "exceptionDetails" in result:
            raise RuntimeError(f"{expression}: {result['exceptionDetails']}")
        return result["result"].get("value")

    def wait_for(self, expression: str, timeout: float = TIMEOUT_S) -> Any:
        """Poll `expression` until it is truthy; its value."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            value = self.evaluate(expression)
            if value:
                return value
            time.sleep(0.1)
        status = self.evaluate("(document.getElementById('status') || {}).textContent")
        raise AssertionError(f"timed out waiting for {expression} (the page says: {status})")

    def open(self, url: str) -> None:
        self.page("Page.navigate", url=url)
        self.wait_for(
            f"location.href.startsWith({json.dumps(url.split('#')[0])}) && document.readyState === 'complete'"
        )

    def upload(self, selector: str, path: Path) -> None:
        root = self.page("DOM.getDocument")["root"]["nodeId"]
        node = self.page("DOM.querySelector", nodeId=root, selector=selector)["nodeId"]
        self.page("DOM.setFileInputFiles", files=[str(path)], nodeId=node)

    def screenshot(self) -> Image.Image:
        data = self.page("Page.captureScreenshot", format="png")["data"]
        return Image.open(io.BytesIO(base64.b64decode(data))).convert("RGB")

    def box(self, selector: str) -> tuple[int, int, int, int]:
        """The element's (left, top, right, bottom) in the screenshot."""
        rect = self.evaluate(
            f"(() => {{ const r = document.querySelector({json.dumps(selector)}).getBoundingClientRect();"
            " return [r.left, r.top, r.right, r.bottom]; })()"
        )
        return tuple(round(v) for v in rect)

    def close(self) -> None:
        with contextlib.suppress(RuntimeError, OSError):
            self.call("Browser.close")
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        os.close(self._to_browser)
        os.close(self._from_browser)


def colourfulness(image: Image.Image) -> float:
    """Mean over pixels of the largest difference between two colour channels (0 for grey)."""
    rgb = np.asarray(image, dtype=np.int16)
    return float((rgb.max(axis=2) - rgb.min(axis=2)).mean())


# ---------------------------------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def chromium() -> str:
    """Chromium's path; a missing browser fails (never skips) before any server is started."""
    path = shutil.which("chromium")
    if path is None:
        pytest.fail("chromium is not installed: run scripts/ensure_chromium.sh (make test does)")
    return path


@pytest.fixture(scope="module")
def holdout(phantom_dir: Path):
    return develop_and_holdout(load_dataset("phantom", phantom_dir))


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory, holdout) -> Path:
    """A resnet18 (28 px, grey) with a calibration (threshold 0.42) and a plausibility gate fitted on phantom
    radiographs, as train-classifier saves one (the weights stay untrained: the page shows whatever it answers)."""
    develop, _ = holdout
    torch.manual_seed(0)
    model = build_classifier("resnet18", in_channels=1, image_size=28, weights="none").eval()
    config = classifier_config("resnet18", 1, 28, "baseline", "none")
    transform = classifier_transform(config, train=False)
    gate = fit_gate(model, transform, develop.subset(range(120)), develop.subset(range(120, 200)))
    config["calibration"] = Calibration(1.5, THRESHOLD, "youden", None, 0.9, 0.8, 0.1, 0.05, 80).to_dict()
    config["plausibility"] = gate.to_dict()
    path = tmp_path_factory.mktemp("model") / "baseline_resnet18.pth"
    save_classifier(path, model, config)
    return path


@pytest.fixture(scope="module")
def storage(tmp_path_factory: pytest.TempPathFactory, checkpoint: Path) -> LocalStore:
    """The models bucket (the .mar, the run's checkpoint) and the results bucket (the run's analysis)."""
    store = LocalStore(tmp_path_factory.mktemp("storage"))
    for bucket in ("models", "results"):
        store.ensure_bucket(bucket)
    archive = build_model_archive(checkpoint, tmp_path_factory.mktemp("export"), MODEL, batch_size=1)
    store.put_file("models", f"model-store/{MODEL}.mar", archive)
    store.put_file("models", f"runs/{RUN}/classifiers/baseline_resnet18.pth", checkpoint)
    analysis = f"runs/{RUN}/analysis/"
    store.put_bytes("results", analysis + layout.COMPARISON_REPORT, b"GAN-enhanced pneumonia classifier: report\n")
    store.put_bytes(
        "results", analysis + layout.ANALYSIS_SUMMARY, json.dumps({"inputs": {"arch": "resnet18"}}).encode()
    )
    store.put_bytes("results", analysis + layout.DATASET_CARD, dataset_card("phantom").encode())
    final = {"strategy": "baseline", "calibration": {"temperature": 1.5, "threshold": THRESHOLD}}
    store.put_bytes(
        "results", f"runs/{RUN}/classifiers/metrics/baseline_final_metrics.json", json.dumps(final).encode()
    )
    card = "# Model card: pneumonia classifier, strategy baseline\n\n**Not for clinical use.** A test model.\n"
    store.put_bytes("results", f"{analysis}{layout.MODEL_CARDS_DIR}/baseline.md", card.encode())
    buffer = io.BytesIO()
    Image.fromarray(np.tile(np.linspace(0, 255, 64, dtype=np.uint8), (48, 1))).save(buffer, "PNG")
    store.put_bytes("results", analysis + "cv_comparison.png", buffer.getvalue())
    return store


@pytest.fixture(scope="module")
def torchserve(tmp_path_factory: pytest.TempPathFactory, storage: LocalStore) -> Iterator[TorchServe]:
    config = ClassifierConfig(
        **ANY_PORT,
        model_store=storage.root / "models" / "model-store",
        workdir=tmp_path_factory.mktemp("torchserve"),
        batch_size=1,
    )
    with TorchServe(config) as ts:
        with ts.client() as client:
            ref = storage.stat("models", f"model-store/{MODEL}.mar")
            register_from_store(client, storage, ref, MODEL, batch_size=1, max_batch_delay_ms=0)
        yield ts


@pytest.fixture(scope="module")
def web(chromium: str, storage: LocalStore, torchserve: TorchServe) -> Iterator[str]:
    """`python -m services.web` on a free port of 127.0.0.1; its base URL once /healthz answers."""
    port = free_port()
    env = {
        "PNEUMONIA_AUTH_TOKENS": f"operator={TOKEN}",
        "PNEUMONIA_STORAGE_ROOT": str(storage.root),
        "PNEUMONIA_WEB_HTTP_PORT": str(port),
        "PNEUMONIA_CLASSIFIER_INFERENCE_URL": torchserve.inference_url,
        "PNEUMONIA_CLASSIFIER_KEY_FILE": str(torchserve.key_file),
    }
    with service_process("web", env, stop_timeout=30) as process:
        url = f"http://127.0.0.1:{port}"
        http = urllib3.PoolManager(retries=False)
        deadline = time.monotonic() + TIMEOUT_S
        while True:
            assert process.poll() is None, process.stderr.read()
            try:
                if http.request("GET", f"{url}/healthz", timeout=2).status == 200:
                    break
            except urllib3.exceptions.HTTPError:
                pass
            assert time.monotonic() < deadline, "the web service did not come up"
            time.sleep(0.2)
        yield url


@pytest.fixture(scope="module")
def browser(chromium: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Chromium]:
    chromium = Chromium(tmp_path_factory.mktemp("chromium-profile"))
    try:
        yield chromium
    finally:
        chromium.close()


def open_with_token(browser: Chromium, url: str) -> None:
    """Open the page and enter the operator's token in its form, as a person does once per tab."""
    browser.open(url)
    browser.evaluate(
        "if (!document.getElementById('token-form').hidden) {"
        f"document.getElementById('token-input').value = {json.dumps(TOKEN)};"
        "document.getElementById('token-form').requestSubmit() }"
    )


def save_png(image: Image.Image, path: Path) -> Path:
    image.save(path)
    return path


# ---------------------------------------------------------------------------------------------------- tests


def test_an_xray_gets_its_answer_and_grad_cam(web: str, browser: Chromium, holdout, tmp_path: Path) -> None:
    _, test = holdout
    xray = save_png(test.load(0).resize((224, 224)), tmp_path / "xray.png")
    open_with_token(browser, f"{web}/")
    assert "Not for clinical use" in browser.evaluate("document.getElementById('clinical-warning').textContent")
    browser.upload("#file", xray)
    assert browser.wait_for("document.body.dataset.state") == "answered", browser.evaluate(
        "document.getElementById('status').textContent"
    )
    browser.wait_for("document.getElementById('overlay').complete && document.getElementById('overlay').naturalWidth")
    shown = browser.evaluate(
        "['result-label', 'result-probability', 'result-threshold', 'result-version', 'result-model']"
        ".map((id) => document.getElementById(id).textContent)"
    )
    label, probability, threshold, version, model = shown
    assert label in ("pneumonia", "normal") and model == MODEL
    assert probability.endswith("%") and 0 <= float(probability[:-1]) <= 100
    assert (label == "pneumonia") == (float(probability[:-1]) >= 100 * THRESHOLD)  # the model's operating point
    assert threshold.startswith(f"{100 * THRESHOLD:.1f}%")  # from the answer, or recorded with the served run
    assert len(version) == 12
    assert browser.evaluate("document.getElementById('model-card-link').getAttribute('href')") == (
        f"/report?run={RUN}#card-baseline"
    )
    screenshot = browser.screenshot()
    screenshot.save(tmp_path / "answer.png")
    overlay = screenshot.crop(browser.box("#overlay"))
    original = screenshot.crop(browser.box("#original"))
    assert colourfulness(original) < 2, "the uploaded X-ray is grey"
    assert colourfulness(overlay) > 20, "the Grad-CAM overlay has colour"


@pytest.mark.parametrize("fmt", ["JPEG", "DICOM"])
def test_jpeg_and_dicom_uploads_are_answered(web: str, browser: Chromium, holdout, tmp_path: Path, fmt: str) -> None:
    _, test = holdout
    pixels = np.array(test.load(1))
    pixels[0, 0], pixels[0, 1] = 0, 255  # a DICOM without a VOI window is shown min-max: the same grey levels
    if fmt == "DICOM":
        path = tmp_path / "xray.dcm"
        path.write_bytes(dicom_bytes(pixels))
    else:
        path = save_png(Image.fromarray(pixels), tmp_path / "xray.jpg")  # by its suffix: JPEG
    open_with_token(browser, f"{web}/")
    browser.upload("#file", path)
    assert browser.wait_for("document.body.dataset.state") == "answered", browser.evaluate(
        "document.getElementById('refusal-detail').textContent"
    )
    assert browser.evaluate("document.getElementById('result-label').textContent") in ("pneumonia", "normal")


def test_a_colour_picture_is_refused_in_plain_words(web: str, browser: Chromium, tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    picture = np.zeros((64, 64, 3), dtype=np.uint8)
    picture[..., 0] = rng.integers(150, 255, (64, 64))  # reddish noise: a photo, not a radiograph
    picture[..., 2] = rng.integers(0, 60, (64, 64))
    path = save_png(Image.fromarray(picture), tmp_path / "photo.png")
    open_with_token(browser, f"{web}/")
    browser.upload("#file", path)
    assert browser.wait_for("document.body.dataset.state") == "refused"
    assert browser.evaluate("document.getElementById('result').hidden") is True
    assert browser.evaluate("document.getElementById('refusal').dataset.code") == "not_grayscale"
    assert browser.evaluate("document.getElementById('refusal-title').textContent") == "The image is in colour"
    assert "Chest X-rays are grey" in browser.evaluate("document.getElementById('refusal-sentence').textContent")
    screenshot = browser.screenshot()
    screenshot.save(tmp_path / "refusal.png")
    refusal = screenshot.crop(browser.box("#refusal"))
    assert np.asarray(refusal)[..., 0].mean() > np.asarray(refusal)[..., 2].mean()  # the red-framed box is drawn


def test_the_report_page_shows_the_run_its_cards_and_figures(web: str, browser: Chromium) -> None:
    open_with_token(browser, f"{web}/report")  # entering it loads the report
    assert browser.wait_for("document.body.dataset.state") == "loaded"
    assert browser.evaluate("document.getElementById('run-name').textContent") == f"run {RUN}"
    assert "report" in browser.evaluate("document.getElementById('report-text').textContent")
    assert "Licence" in browser.evaluate("document.getElementById('card-dataset').textContent")
    assert "Not for clinical use." in browser.evaluate("document.querySelector('#card-baseline strong').textContent")
    browser.wait_for("[...document.querySelectorAll('#figures img')].every((i) => i.complete && i.naturalWidth)")
