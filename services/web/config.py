"""Web page settings, read from environment variables; the object store's are in shared.storage.config, the
accepted callers' tokens (the operator's) in shared.auth.

An empty variable counts as unset. Listening on anything but 127.0.0.1 (in a container, 0.0.0.0 behind a port
published on the host's 127.0.0.1) is an explicit choice. The variables, generated from WebConfig:
"""

from __future__ import annotations

from pathlib import Path

from shared.auth import AuthConfig
from shared.settings import Port, Settings, env_prefix, setting, settings_help
from shared.storage.config import BucketName, StorageConfig, bucket_setting

# TorchServe's own default max_request_size (services/classifier's PNEUMONIA_CLASSIFIER_MAX_REQUEST_SIZE default):
# a larger upload would be refused there anyway, so it is refused here before it is read.
DEFAULT_MAX_UPLOAD_BYTES = 6_553_500


class WebConfig(Settings, alias_generator=env_prefix("PNEUMONIA_WEB_")):
    """The web page's settings, one field per PNEUMONIA_WEB_* variable (and TorchServe's address and key file)."""

    host: str = setting("127.0.0.1", "address the page is served on (the operator's machine only by default)")
    http_port: Port = setting(8090, "HTTP port (0: any free port)")
    inference_url: str = setting(
        "http://127.0.0.1:8080", "TorchServe's inference API", env="PNEUMONIA_CLASSIFIER_INFERENCE_URL"
    )
    key_file: Path = setting(
        Path("torchserve/key_file.json"),
        "TorchServe's key_file.json (its inference key is read here, never sent to the browser)",
        env="PNEUMONIA_CLASSIFIER_KEY_FILE",
    )
    model: str = setting("pneumonia", "the TorchServe model the page asks")
    timeout: float = setting(60.0, "seconds one call to TorchServe may take", gt=0)
    max_upload_bytes: int = setting(DEFAULT_MAX_UPLOAD_BYTES, "largest image upload in bytes", ge=1024)
    cache_seconds: float = setting(30.0, "how long the list of runs in the results bucket is reused", ge=0)
    results_bucket: BucketName = bucket_setting("results", "bucket of the experiments' reports")
    models_bucket: BucketName = bucket_setting(
        "models", "bucket of the trained checkpoints (only their sha256 is read: which run served the model)"
    )


__doc__ += settings_help(WebConfig, StorageConfig, AuthConfig)
