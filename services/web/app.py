"""The web page's HTTP app (FastAPI): the pages and their JSON API.

    GET  /                      upload page (static HTML + JS)             open
    GET  /report                the latest experiment's report page        open
    GET  /static/...            the pages' CSS and JavaScript              open
    GET  /healthz               {"status": "serving"}                      open
    POST /api/classify          image bytes -> answer + Grad-CAM overlay   bearer token
    GET  /api/report[?run=]     the run's report text, figures and cards   bearer token
    GET  /api/report/figure     ?run=&name=: one figure (PNG)              bearer token
    GET  /api/report/card       ?run=&name=: one card as safe HTML         bearer token

Access: the pages themselves hold no data; everything a page shows comes from /api/*, which needs
`Authorization: Bearer <token>` of a caller in PNEUMONIA_AUTH_TOKENS (shared.auth; in compose the operator's
token). The page asks for the token once and keeps it in the tab's sessionStorage (gone when the tab closes); its
JavaScript sends it with every API call. TorchServe's inference key stays on the server. The service binds
127.0.0.1 by default (the operator's machine); every answer carries a strict Content-Security-Policy (no inline
script, nothing from other origins).

Errors: {"detail": message} with 401 (no or wrong token), 404 (no such run, figure or card), 413 (upload over
PNEUMONIA_WEB_MAX_UPLOAD_BYTES, refused before it is read, or an image with more pixels than shared.images allows),
400 (the classifier refused the image: {"detail", "refusal": {code, title, sentence, detail}}, the plausibility
gate's reason code in plain words, services.web.refusals), 502/503 (the classifier failed or is unreachable),
503 (object storage unreachable).
"""

from __future__ import annotations

import base64
import io
import logging
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from fastapi import FastAPI, HTTPException, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import FileResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles
from PIL import Image, UnidentifiedImageError

from services.web.config import DEFAULT_MAX_UPLOAD_BYTES
from services.web.inference import InferenceError, TorchServeInference
from services.web.markdown import render
from services.web.refusals import Refusal, explain_refusal, too_large, unavailable
from services.web.reports import ReportNotFoundError, Reports
from shared.asgi import BearerAuth, BodyLimit
from shared.auth import Callers
from shared.images import MAX_IMAGE_PIXELS
from shared.storage import StorageError

log = logging.getLogger(__name__)

STATIC = Path(__file__).with_name("static")
OPEN_PATHS = frozenset({"/", "/report", "/healthz", "/favicon.ico"})
OPEN_PREFIXES = ("/static/",)
CLASSIFY_PATH = "/api/classify"
NOT_FOR_CLINICAL_USE = (
    "Not for clinical use. A research model: not validated for diagnosis, triage or any decision about a patient."
)
SECURITY_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data: blob:; connect-src 'self'; "
        "base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
    "Cache-Control": "no-store",
}


def is_open(path: str) -> bool:
    return path in OPEN_PATHS or path.startswith(OPEN_PREFIXES)


def refusal_body(refusal: Refusal) -> dict[str, Any]:
    """The JSON of a refusal: its title as FastAPI's "detail", and the whole refusal for the page."""
    return {"detail": refusal.title, "refusal": refusal.to_dict()}


def refusal_response(refusal: Refusal, status: int) -> JSONResponse:
    return JSONResponse(refusal_body(refusal), status_code=status)


def pixel_count_refusal(image: bytes) -> Refusal | None:
    """A refusal for a PNG/JPEG whose header declares more pixels than shared.images.MAX_IMAGE_PIXELS (read from
    the header only, nothing decoded); None otherwise (DICOM and the rest are the classifier's to judge)."""
    try:
        with Image.open(io.BytesIO(image)) as img:
            pixels = img.width * img.height * getattr(img, "n_frames", 1)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        pixels = MAX_IMAGE_PIXELS + 1
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError):
        return None
    if pixels <= MAX_IMAGE_PIXELS:
        return None
    return explain_refusal(f"image too large: {pixels} pixels exceeds the limit of {MAX_IMAGE_PIXELS}")


def decision_threshold(answer: dict[str, Any]) -> float | None:
    """The model's operating point when the answer carries it (`decision_threshold`; `threshold` too). The handler's
    answer does not yet: then the page shows the threshold recorded with the served model's run, when the model
    version is found there (Reports.operating_point)."""
    for field in ("decision_threshold", "threshold"):
        value = answer.get(field)
        if isinstance(value, int | float) and not isinstance(value, bool):
            return float(value)
    return None


def create_app(
    inference: TorchServeInference,
    reports: Reports,
    callers: Callers | None,
    *,
    model: str = "pneumonia",
    max_upload_bytes: int = DEFAULT_MAX_UPLOAD_BYTES,
    is_serving: Callable[[], bool] = lambda: True,
) -> FastAPI:
    """The app over TorchServe (`inference`, model `model`) and the results bucket (`reports`); `callers`: who may
    use the API (None: everyone, said on purpose with PNEUMONIA_AUTH_DISABLED=true)."""
    app = FastAPI(
        title="pneumonia web page",
        description="Upload a chest X-ray, see the classifier's answer; read the latest experiment's report.",
        version="1",
        docs_url=None,
        redoc_url=None,
        openapi_url=None,
    )
    app.add_middleware(BodyLimit, limit=max_upload_bytes, answer=lambda limit: refusal_body(too_large(limit)))
    if callers is not None:  # added after the limit: runs before it, no body read
        app.add_middleware(BearerAuth, callers=callers, is_open=is_open)

    @app.middleware("http")
    async def security_headers(request: Request, call_next: Callable[[Request], Awaitable[Response]]) -> Response:
        response = await call_next(request)
        for name, value in SECURITY_HEADERS.items():
            response.headers.setdefault(name, value)
        return response

    app.mount("/static", StaticFiles(directory=STATIC), name="static")

    @app.get("/", include_in_schema=False)
    def upload_page() -> FileResponse:
        return FileResponse(STATIC / "index.html", media_type="text/html")

    @app.get("/report", include_in_schema=False)
    def report_page() -> FileResponse:
        return FileResponse(STATIC / "report.html", media_type="text/html")

    @app.get("/healthz")
    def healthz() -> JSONResponse:
        if is_serving():
            return JSONResponse({"status": "serving"})
        return JSONResponse({"status": "not_serving"}, status_code=503)

    @app.post(CLASSIFY_PATH)
    async def classify(request: Request) -> JSONResponse:
        image = await request.body()
        if not image:
            return refusal_response(explain_refusal("empty request body"), 400)
        refused = pixel_count_refusal(image)
        if refused is not None:
            return refusal_response(refused, 413)
        return await run_in_threadpool(classify_image, inference, reports, model, image)

    @app.get("/api/report")
    def report(run: str = "") -> dict[str, Any]:
        found = storage_call(reports.resolve, run or None)
        contents = storage_call(reports.contents, found)
        return {
            **contents.to_dict(),
            "runs": storage_call(reports.runs),
            "report": storage_call(reports.report_text, found),
        }

    @app.get("/api/report/figure")
    def figure(name: str, run: str = "") -> Response:
        found = storage_call(reports.resolve, run or None)
        return Response(storage_call(reports.figure, found, name), media_type="image/png")

    @app.get("/api/report/card")
    def card(name: str, run: str = "") -> dict[str, str]:
        """name: 'dataset' or a strategy."""
        found = storage_call(reports.resolve, run or None)
        text = reports_card(reports, found, name)
        return {"run": found, "name": name, "html": render(text)}

    return app


def reports_card(reports: Reports, run: str, name: str) -> str:
    if name == "dataset":
        return storage_call(reports.dataset_card, run)
    return storage_call(reports.model_card, run, name)


STORAGE_UNAVAILABLE = "object storage is not available; try again later (the operator finds the cause in the log)"


def storage_call(call: Callable[..., Any], *args: Any) -> Any:
    """call(*args), its storage errors as HTTP errors: 404 for what is not there, 503 otherwise. A 503 says only
    that storage is unavailable: the error's text (endpoint, bucket, key, the S3 server's words) goes to the log."""
    try:
        return call(*args)
    except ReportNotFoundError as exc:
        raise HTTPException(404, str(exc)) from exc
    except StorageError as exc:
        log.error("object storage failed: %s", exc)
        raise HTTPException(503, STORAGE_UNAVAILABLE) from exc


def classify_image(inference: TorchServeInference, reports: Reports, model: str, image: bytes) -> JSONResponse:
    """Ask TorchServe for the answer, then its Grad-CAM; a refusal in plain words."""
    try:
        answer = inference.predict(model, image)
    except InferenceError as exc:
        return inference_failure(exc)
    overlay, overlay_note = None, None
    try:
        explanation = inference.explain(model, image)
        overlay = "data:image/png;base64," + base64.b64encode(explanation.png).decode("ascii")
    except InferenceError as exc:  # the answer stands without its heat map (e.g. a model served as ONNX)
        log.warning("no Grad-CAM for an answered image: %s", exc)
        overlay_note = f"No Grad-CAM overlay: {exc.message}"
    version = str(answer.get("model_version", ""))
    threshold, threshold_source, served = decision_threshold(answer), "answer", None
    try:
        served = reports.served(version)
        if threshold is None and served is not None:
            threshold, threshold_source = reports.operating_point(*served), "training record"
    except StorageError as exc:
        log.warning("cannot look up the served model's run: %s", exc)
    return JSONResponse(
        {
            "label": answer.get("label"),
            "pneumonia_probability": answer.get("pneumonia_probability"),
            "decision_threshold": threshold,
            "threshold_source": None if threshold is None else threshold_source,
            "model_version": version,
            "model": model,
            "served": None if served is None else {"run": served[0], "strategy": served[1]},
            "overlay": overlay,
            "overlay_note": overlay_note,
            "not_for_clinical_use": NOT_FOR_CLINICAL_USE,
            "answer": answer,
        }
    )


def inference_failure(exc: InferenceError) -> JSONResponse:
    """400 with the plain-words refusal when the classifier refused the image; 413 over its size limit; 503 when
    it is unreachable or has no such model; 502 for any other failure of it."""
    if exc.status == 400 and not exc.key_refused:
        refusal = explain_refusal(exc.message)
        log.info("the classifier refused an image: %s", refusal.code)
        return refusal_response(refusal, 400)
    if exc.status == 413:
        return refusal_response(explain_refusal("image too large: " + exc.message), 413)
    log.error("classifier call failed: %s", exc)
    status = 503 if exc.status in (None, 404, 503) or exc.key_refused else 502
    return refusal_response(unavailable(str(exc)), status)
