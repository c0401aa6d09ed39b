"""The web page's service (services.web) through its HTTP API with FastAPI's TestClient: access, limits, the
report API over a real LocalStore, the refusals in plain words, and the safe Markdown of the cards. The answers of
a real TorchServe, and the page in a real browser: tests/test_web_browser.py."""

from __future__ import annotations

import io
import json
import logging
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image
from storage_server import free_port

from services.web.app import SECURITY_HEADERS, STORAGE_UNAVAILABLE, create_app, decision_threshold
from services.web.config import WebConfig
from services.web.inference import TorchServeInference
from services.web.markdown import render
from services.web.refusals import GATE_REASONS, explain_refusal
from services.web.reports import Reports
from shared import layout
from shared.auth import Callers
from shared.plausibility import REASONS
from shared.storage import LocalStore, S3Store

TOKEN = "operator-token-" + "0123456789abcdef" * 2
AUTH = {"Authorization": f"Bearer {TOKEN}"}
RUN_OLD, RUN_NEW = "20261129-101010-quick", "20261130-090000-quick"
CHECKPOINT = b"not really a checkpoint, but bytes with a sha256"
PNG_1X1 = b"\x89PNG\r\n\x1a\n" + b"\x00" * 8


def png(width: int = 32, height: int = 32) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (height, width), dtype=np.uint8)).save(buffer, "PNG")
    return buffer.getvalue()


def write_run(store: LocalStore, run: str, strategies: tuple[str, ...] = ("baseline", "augmented")) -> None:
    """A run's analysis as the analyzer writes it, and its strategies' checkpoints in the models bucket."""
    analysis = f"runs/{run}/analysis/"
    store.put_bytes("results", analysis + layout.COMPARISON_REPORT, f"report of {run}\n<b>not markup</b>".encode())
    store.put_bytes("results", analysis + "cv_comparison.png", png())
    store.put_bytes(
        "results", analysis + layout.ANALYSIS_SUMMARY, json.dumps({"inputs": {"arch": "resnet18"}}).encode()
    )
    store.put_bytes("results", analysis + layout.DATASET_CARD, b"# Dataset card: phantom\n\n- Licence: ours\n")
    for strategy in strategies:
        card = f"# Model card: {strategy}\n\n**Not for clinical use.** <script>alert(1)</script>\n"
        store.put_bytes("results", f"{analysis}{layout.MODEL_CARDS_DIR}/{strategy}.md", card.encode())
        final = {"strategy": strategy, "calibration": {"temperature": 1.2, "threshold": 0.25 + 0.1 * len(strategy)}}
        store.put_bytes(
            "results", f"runs/{run}/classifiers/metrics/{strategy}_final_metrics.json", json.dumps(final).encode()
        )
        weights = CHECKPOINT + f"{run}/{strategy}".encode()
        store.put_bytes("models", f"runs/{run}/classifiers/{strategy}_resnet18.pth", weights)


@pytest.fixture
def store(tmp_path: Path) -> LocalStore:
    store = LocalStore(tmp_path / "storage")
    for bucket in ("results", "models"):
        store.ensure_bucket(bucket)
    write_run(store, RUN_OLD)
    write_run(store, RUN_NEW)
    return store


def make_client(store: LocalStore, callers: Callers | None = None, **kwargs) -> TestClient:  # noqa: ANN003
    """The app over `store`, asking a TorchServe where none listens (nothing here answers predictions)."""
    inference = TorchServeInference(f"http://127.0.0.1:{free_port()}", Path("/nonexistent/key_file.json"), 5)
    reports = Reports(store, "results", "models", cache_seconds=0)
    callers = Callers({"operator": TOKEN}) if callers is None else callers
    return TestClient(create_app(inference, reports, callers, **kwargs))


def test_pages_health_and_static_assets_are_open_the_api_needs_the_token(store: LocalStore) -> None:
    client = make_client(store)
    for path in ("/", "/report", "/static/style.css", "/static/upload.js", "/healthz"):
        response = client.get(path)
        assert response.status_code == 200, path
        assert response.headers["Content-Security-Policy"] == SECURITY_HEADERS["Content-Security-Policy"]
        assert response.headers["X-Content-Type-Options"] == "nosniff"
    page = client.get("/").text
    assert "Not for clinical use" in page and "<script>" not in page.replace('<script src="/static/', "")
    for method, path in (("GET", "/api/report"), ("POST", "/api/classify"), ("GET", "/api/report/card?name=dataset")):
        refused = client.request(method, path)
        assert refused.status_code == 401 and refused.headers["WWW-Authenticate"] == "Bearer"
        wrong = client.request(method, path, headers={"Authorization": "Bearer " + "x" * 40})
        assert wrong.status_code == 401 and wrong.json() == {"detail": "invalid credential"}
    assert client.get("/api/report", headers=AUTH).status_code == 200


def test_an_upload_over_the_limit_is_refused_before_it_is_read(store: LocalStore) -> None:
    client = make_client(store, max_upload_bytes=2048)
    response = client.post("/api/classify", content=b"\0" * 4096, headers=AUTH)
    assert response.status_code == 413
    assert response.json()["refusal"]["code"] == "too_large" and "MB" in response.json()["refusal"]["sentence"]
    chunks = (b"\0" * 1024 for _ in range(4))  # no Content-Length: counted as it arrives
    assert client.post("/api/classify", content=chunks, headers=AUTH).status_code == 413


def test_an_image_with_too_many_pixels_is_refused_from_its_header(store: LocalStore) -> None:
    """A PNG header declaring 20000 x 20000 pixels (a decompression bomb) is refused without decoding it."""
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = chunk(b"IHDR", struct.pack(">IIBBBBB", 20000, 20000, 8, 0, 0, 0, 0))
    bomb = b"\x89PNG\r\n\x1a\n" + header + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")
    response = make_client(store).post("/api/classify", content=bomb, headers=AUTH)
    assert response.status_code == 413
    assert response.json()["refusal"]["code"] == "too_many_pixels"


def test_an_empty_upload_and_an_unreachable_classifier_are_explained(store: LocalStore) -> None:
    client = make_client(store)
    empty = client.post("/api/classify", content=b"", headers=AUTH)
    assert empty.status_code == 400 and empty.json()["refusal"]["code"] == "empty"
    down = client.post("/api/classify", content=png(), headers=AUTH)
    assert down.status_code == 503
    refusal = down.json()["refusal"]
    assert refusal["code"] == "unavailable" and "not a problem with your image" in refusal["sentence"]
    assert "key file" in refusal["detail"]  # no key file: TorchServe is not running


def test_storage_down_is_a_503_that_tells_nothing_of_the_storage(caplog: pytest.LogCaptureFixture) -> None:
    """The 503 once echoed the storage error (the S3 endpoint, the bucket, the client's words); now the answer is a
    fixed sentence and the detail goes to the log, for the operator."""
    port = free_port()  # nothing listens there
    store = S3Store(f"127.0.0.1:{port}", "web-access-key", "web-secret-key", secure=False, retries=1)
    client = make_client(store)  # type: ignore[arg-type]
    with caplog.at_level(logging.ERROR, logger="services.web.app"):
        for path in ("/api/report", f"/api/report?run={RUN_NEW}", f"/api/report/figure?run={RUN_NEW}&name=x.png"):
            response = client.get(path, headers=AUTH)
            assert (response.status_code, response.json()) == (503, {"detail": STORAGE_UNAVAILABLE}), path
            for secret in (str(port), "127.0.0.1", "results", "web-access-key", "web-secret-key"):
                assert secret not in response.text
    logged = [record.getMessage() for record in caplog.records if "object storage failed" in record.getMessage()]
    assert logged and all(str(port) in message for message in logged)  # the operator still learns where and why


def test_the_report_api_serves_the_latest_run_and_any_other(store: LocalStore) -> None:
    client = make_client(store)
    latest = client.get("/api/report", headers=AUTH).json()
    assert latest["run"] == RUN_NEW and latest["runs"] == [RUN_NEW, RUN_OLD]
    assert latest["report"].startswith(f"report of {RUN_NEW}")
    assert latest["figures"] == ["cv_comparison.png"]
    assert latest["model_cards"] == ["augmented", "baseline"] and latest["dataset_card"] is True
    assert client.get(f"/api/report?run={RUN_OLD}", headers=AUTH).json()["report"].startswith(f"report of {RUN_OLD}")
    figure = client.get("/api/report/figure?name=cv_comparison.png", headers=AUTH)
    assert figure.status_code == 200 and figure.headers["content-type"] == "image/png"
    assert figure.content == store.get_bytes("results", f"runs/{RUN_NEW}/analysis/cv_comparison.png")
    card = client.get(f"/api/report/card?run={RUN_OLD}&name=baseline", headers=AUTH).json()
    assert card["html"].startswith("<h1>Model card: baseline</h1>")
    assert "<script>" not in card["html"] and "&lt;script&gt;" in card["html"]
    assert "<h1>Dataset card: phantom</h1>" in client.get("/api/report/card?name=dataset", headers=AUTH).json()["html"]


@pytest.mark.parametrize(
    "path",
    [
        "/api/report?run=no-such-run",
        "/api/report?run=../models",
        "/api/report/figure?name=../../models/x.png",
        "/api/report/figure?name=analysis_summary.json",
        "/api/report/figure?name=missing.png",
        "/api/report/card?name=../../../models/runs",
        "/api/report/card?name=curriculum",
    ],
)
def test_what_is_not_in_the_report_is_404(store: LocalStore, path: str) -> None:
    response = make_client(store).get(path, headers=AUTH)
    assert response.status_code == 404, response.text
    assert response.json()["detail"]


def test_no_report_yet_says_what_to_do(tmp_path: Path) -> None:
    response = make_client(LocalStore(tmp_path)).get("/api/report", headers=AUTH)
    assert response.status_code == 404 and "run an experiment first" in response.json()["detail"]


def test_the_served_model_is_found_by_its_version(store: LocalStore) -> None:
    reports = Reports(store, "results", "models", cache_seconds=0)
    sha = store.stat("models", f"runs/{RUN_OLD}/classifiers/augmented_resnet18.pth").sha256
    assert reports.served(sha[:12]) == (RUN_OLD, "augmented")
    assert reports.served("0" * 12) is None
    assert reports.served("../etc") is None  # not a version: nothing is looked up
    assert reports.operating_point(RUN_OLD, "augmented") == pytest.approx(0.25 + 0.1 * len("augmented"))
    assert reports.operating_point(RUN_OLD, "curriculum") is None  # not recorded


def test_every_reason_code_of_the_gate_has_plain_words() -> None:
    assert set(GATE_REASONS) == set(REASONS)
    for reason in REASONS:
        refusal = explain_refusal(f"implausible input [{reason}]: image is unlike ...")
        assert refusal.code == reason and refusal.title and refusal.sentence
        assert "[" not in refusal.sentence and reason not in refusal.sentence  # words, not codes
    cases = {
        "request body is not an image (expected PNG, JPEG or DICOM)": "not_an_image",
        "truncated or corrupt PNG image: broken data stream": "corrupt",
        "DICOM file has no pixel data": "dicom",
        "image too large: 9000 x 9000 x 1 pixels exceeds the limit (decompression bomb?)": "too_many_pixels",
        "something new": "refused",
    }
    for message, code in cases.items():
        assert explain_refusal(message).code == code, message
        assert explain_refusal(message).detail == message


def test_the_operating_point_is_shown_only_when_the_answer_carries_it() -> None:
    assert decision_threshold({"label": "normal", "pneumonia_probability": 0.2}) is None
    assert decision_threshold({"decision_threshold": 0.31}) == 0.31
    assert decision_threshold({"threshold": 0.5}) == 0.5
    assert decision_threshold({"decision_threshold": True, "threshold": "0.4"}) is None


def test_markdown_is_rendered_safely() -> None:
    html = render(
        "<!-- written by shared.cards -->\n# Card <img src=x onerror=alert(1)>\n\n"
        "**Not for clinical use.** plain *words* and `code <b>`\n\n- one\n- two\n  continued\n\n1. first\n\n"
        '[ok](https://example.org/a?b=1&c=2) [bad](javascript:alert) [rel](other.md) [quote](https://x.org/"y)\n'
    )
    assert "written by" not in html
    assert "<h1>Card &lt;img src=x onerror=alert(1)&gt;</h1>" in html
    assert "<strong>Not for clinical use.</strong>" in html and "<em>words</em>" in html
    assert "<code>code &lt;b&gt;</code>" in html
    assert "<ul>\n<li>one</li>\n<li>two continued</li>\n</ul>" in html and "<ol>\n<li>first</li>\n</ol>" in html
    assert "javascript" not in html.split("bad")[0] and 'href="javascript' not in html and "other.md" not in html
    assert '<a href="https://example.org/a?b=1&amp;c=2" rel="noopener noreferrer">ok</a>' in html
    assert "x.org" not in html  # a target with a quote is dropped, its label kept


def test_config_binds_the_loopback_by_default_and_reads_torchserve_variables() -> None:
    config = WebConfig.from_env({})
    assert (config.host, config.http_port, config.model) == ("127.0.0.1", 8090, "pneumonia")
    config = WebConfig.from_env(
        {"PNEUMONIA_CLASSIFIER_INFERENCE_URL": "http://classifier:8080", "PNEUMONIA_CLASSIFIER_KEY_FILE": "/k.json"}
    )
    assert config.inference_url == "http://classifier:8080" and config.key_file == Path("/k.json")
