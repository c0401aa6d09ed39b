"""HTTP front end of the generator service (FastAPI): POST /v1/generate, GET /healthz, the OpenAPI document at
/openapi.json (no /docs or /redoc: their pages load Swagger UI and ReDoc from a CDN).

The same semantics as the gRPC GeneratorService: both call SyntheticImageService.generate. Errors come back as
{"detail": message} with 422 for a malformed body, 400 for invalid values, 404 when the checkpoint does not exist,
409 when the checkpoint cannot serve the request (wrong kind, other sha256, a label it does not generate), 413 for a
body over MAX_BODY_BYTES (refused before it is read, or as soon as it grows past), 503 when object storage is
unavailable (no manifest was written), 500 otherwise. With callers (shared.auth), every endpoint but /healthz needs
`Authorization: Bearer <token>` of one of them (/openapi.json too): 401 otherwise, with nothing done.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Literal

import grpc
from fastapi import Depends, FastAPI, HTTPException
from fastapi.responses import JSONResponse
from fastapi.security import HTTPBearer
from pydantic import BaseModel, ConfigDict, Field

from services.generator.generate_synthetic import LABELS
from services.generator.service import GenerationRequest, SyntheticImageService
from shared.asgi import BearerAuth, BodyLimit
from shared.auth import Callers
from shared.grpc_service import status_for
from shared.storage import ObjectRef

log = logging.getLogger(__name__)

# A GenerateBody is a few hundred bytes; nothing larger is read into memory.
MAX_BODY_BYTES = 64 * 1024
OPEN_PATHS = frozenset({"/healthz"})  # the probes'
# Declares the bearer scheme in the OpenAPI document; BearerAuth enforces it.
BEARER_SCHEME = HTTPBearer(auto_error=False, description="a caller's token from PNEUMONIA_AUTH_TOKENS")
HTTP_STATUS = {
    grpc.StatusCode.INVALID_ARGUMENT: 400,
    grpc.StatusCode.NOT_FOUND: 404,
    grpc.StatusCode.FAILED_PRECONDITION: 409,
    grpc.StatusCode.UNAVAILABLE: 503,
}


class CheckpointRef(BaseModel):
    """The generator checkpoint in object storage."""

    model_config = ConfigDict(extra="forbid")

    bucket: str = Field("", description="bucket; empty: the service's models bucket")
    key: str = Field(description="object key, e.g. gan/generator_final.pth")
    sha256: str = Field("", description="expected sha256 of the checkpoint; empty: whatever is stored")


class GenerateBody(BaseModel):
    """What to generate (GenerateRequest in proto/pneumonia_proto/v1/generator.proto)."""

    model_config = ConfigDict(extra="forbid")

    checkpoint: CheckpointRef
    label: Literal["normal", "pneumonia"] = Field(description="class of the images; the checkpoint must generate it")
    count: int = Field(description="number of images, 1 to the service's maximum")
    seed: int = Field(0, description="seed of the per-image latents, >= 0")
    batch_size: int = Field(0, description="images per forward pass; 0: the service's default")
    output_prefix: str = Field("", description="key prefix in the synthetic bucket above the result's own prefix")

    def to_request(self) -> GenerationRequest:
        return GenerationRequest(
            checkpoint_key=self.checkpoint.key,
            label=LABELS[self.label],
            count=self.count,
            seed=self.seed,
            batch_size=self.batch_size,
            checkpoint_bucket=self.checkpoint.bucket,
            checkpoint_sha256=self.checkpoint.sha256,
            output_prefix=self.output_prefix,
        )


class StoredObject(BaseModel):
    """A stored object (ObjectRef)."""

    bucket: str
    key: str
    sha256: str
    size: int

    @classmethod
    def of(cls, ref: ObjectRef) -> StoredObject:
        return cls(bucket=ref.bucket, key=ref.key, sha256=ref.sha256, size=ref.size)


class GenerateResult(BaseModel):
    """Where the images are (GenerateResponse)."""

    images: list[StoredObject] = Field(
        description="the objects holding the images, in manifest order: .npz shards (or one PNG per image)"
    )
    manifest: StoredObject = Field(description="manifest.csv, stored after every image")
    prefix: str = Field(description="the key prefix holding the images and the manifest")
    reused: bool = Field(description="an identical earlier request's stored result was returned")


def create_app(
    service: SyntheticImageService, callers: Callers | None, is_serving: Callable[[], bool] = lambda: True
) -> FastAPI:
    """The FastAPI app over `service`; /healthz answers 503 once `is_serving()` turns false (shutdown); `callers`:
    who may call the API (None: everyone, said on purpose)."""
    app = FastAPI(
        title="pneumonia generator",
        description="Labelled synthetic chest X-rays from a stored DCGAN generator checkpoint.",
        version="1",
        docs_url=None,  # Swagger UI and ReDoc pages would load their scripts from a CDN
        redoc_url=None,
    )
    app.add_middleware(BodyLimit, limit=MAX_BODY_BYTES)
    if callers is not None:  # added last: runs first, before the body limit
        app.add_middleware(BearerAuth, callers=callers, is_open=OPEN_PATHS.__contains__)
    errors: dict[int | str, dict[str, str]] = {
        400: {"description": "invalid values"},
        401: {"description": "missing or invalid bearer token"},
        404: {"description": "checkpoint not found"},
        409: {"description": "the checkpoint cannot serve the request"},
        413: {"description": f"request body over {MAX_BODY_BYTES} bytes"},
        503: {"description": "object storage unavailable"},
    }

    @app.post("/v1/generate", responses=errors, dependencies=[Depends(BEARER_SCHEME)])
    def generate(body: GenerateBody) -> GenerateResult:
        """Generate the images (or reuse the identical request's stored result) and return their references."""
        try:
            result = service.generate(body.to_request())
        except Exception as exc:
            code, message = status_for(exc)
            status = HTTP_STATUS.get(code, 500)
            if status == 500:
                log.error("generate failed: %s", message, exc_info=exc)
            raise HTTPException(status, message) from exc
        return GenerateResult(
            images=[StoredObject.of(ref) for ref in result.images],
            manifest=StoredObject.of(result.manifest),
            prefix=result.prefix,
            reused=result.reused,
        )

    @app.get("/healthz", responses={503: {"description": "shutting down"}})
    def healthz() -> JSONResponse:
        """{"status": "serving"} while the service takes requests."""
        if is_serving():
            return JSONResponse({"status": "serving"})
        return JSONResponse({"status": "not_serving"}, status_code=503)

    return app
