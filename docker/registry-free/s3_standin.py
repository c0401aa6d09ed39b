"""What docker-compose.yml does with MinIO and its `mc`, with moto's S3 server (CI only; compose.s3-standin.yml).

    python /opt/s3_standin.py serve          # the S3 server on :9000: the buckets, one account per service with
                                             # its policy from /policies, every request checked against it (minio)
    python /opt/s3_standin.py ready          # exit 0 when the S3 server at $S3_URL answers
    python /opt/s3_standin.py init           # check that each service's account can reach its buckets (minio-init)
    python /opt/s3_standin.py mirror RUN_ID  # copy runs/RUN_ID of the results bucket to /out/RUN_ID (report)

The bucket names and the credentials come from the same variables as in docker-compose.yml. The accounts are the
ones minio-init makes in MinIO (pneumonia-<service>, policy k8s/base/storage-policies/<service>.json); moto
enforces the same IAM policy language, so a service that needs a right its policy lacks fails the smoke run.
"""

from __future__ import annotations

import json
import os
import sys
import threading
import urllib.request
from pathlib import Path

S3_URL = os.environ.get("S3_URL", "http://minio:9000")
SERVICES = ("trainer", "generator", "analyzer", "orchestrator", "web")
POLICIES = Path(os.environ.get("POLICY_DIR", "/policies"))
BUCKET_VARIABLES = (
    "PNEUMONIA_DATASETS_BUCKET",
    "PNEUMONIA_SYNTHETIC_BUCKET",
    "PNEUMONIA_MODELS_BUCKET",
    "PNEUMONIA_RESULTS_BUCKET",
)


def account(service: str) -> tuple[str, str]:
    """(access key, secret key) of a service's account: pneumonia-<service>, PNEUMONIA_<SERVICE>_S3_SECRET_KEY."""
    return f"pneumonia-{service}", os.environ[f"PNEUMONIA_{service.upper()}_S3_SECRET_KEY"]


def client(access_key: str, secret_key: str):  # noqa: ANN201 - boto3 is only in the stand-in's image
    import boto3

    return boto3.client(
        "s3",
        endpoint_url=S3_URL,
        aws_access_key_id=access_key,
        aws_secret_access_key=secret_key,
        region_name="us-east-1",
    )


def install_accounts(accounts: dict[str, tuple[str, str, str]]) -> None:
    """IAM users in moto, {user: (access key, secret key, policy JSON)}, with exactly these keys (moto's API makes
    random ones, so they are set on its objects)."""
    from moto.core import DEFAULT_ACCOUNT_ID
    from moto.iam.models import iam_backends

    backend = iam_backends[DEFAULT_ACCOUNT_ID]["aws"]
    for user, (access_key, secret_key, policy) in accounts.items():
        backend.users.pop(user, None)  # made again, e.g. by a second test server in one process
        backend.create_user("us-east-1", user)
        backend.put_user_policy(user, "storage", policy)
        key = backend.create_access_key(user)
        key.access_key_id, key.secret_access_key = access_key, secret_key


def enforce_policies(enabled: bool = True) -> None:
    """From now on moto checks every request's signature and IAM policy (off: it accepts anything, its default).
    Moto cannot check a presigned URL (it fails with 500): those pass unchecked, as without enforcement."""
    from moto import settings
    from moto.core.authorization import ActionAuthenticatorMixin

    settings.INITIAL_NO_AUTH_ACTION_COUNT = 0 if enabled else float("inf")
    ActionAuthenticatorMixin.request_count = 0
    check = ActionAuthenticatorMixin.__dict__["_authenticate_and_authorize_action"]
    check = getattr(check, "__wrapped__", check)

    def unless_presigned(self, *args, **kwargs):  # noqa: ANN001, ANN002, ANN003, ANN202
        if "X-Amz-Signature=" in self.uri and "Authorization" not in self.headers:
            return None
        return check(self, *args, **kwargs)

    unless_presigned.__wrapped__ = check
    ActionAuthenticatorMixin._authenticate_and_authorize_action = unless_presigned if enabled else check


def serve() -> int:
    import boto3
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="0.0.0.0", port=9000, verbose=False)
    server.start()
    s3 = boto3.client(
        "s3",
        endpoint_url="http://127.0.0.1:9000",
        region_name="us-east-1",
        aws_access_key_id="setup",
        aws_secret_access_key="setup",
    )
    for variable in BUCKET_VARIABLES:
        s3.create_bucket(Bucket=os.environ[variable])
    install_accounts({account(name)[0]: (*account(name), (POLICIES / f"{name}.json").read_text()) for name in SERVICES})
    enforce_policies()
    print("S3 stand-in on :9000: buckets made, one account per service, policies enforced", flush=True)
    threading.Event().wait()
    return 0


def ready() -> int:
    with urllib.request.urlopen(f"{S3_URL}/moto-api/", timeout=3) as response:
        return 0 if response.status == 200 else 1


def init() -> int:
    """The stand-in made the buckets and accounts as it started: check that each account reaches its buckets."""
    for service in SERVICES:
        policy = json.loads((POLICIES / f"{service}.json").read_text())
        buckets = [arn.rsplit(":", 1)[1] for arn in policy["Statement"][0]["Resource"]]
        for bucket in buckets:
            client(*account(service)).head_bucket(Bucket=bucket)
        print(f"pneumonia-{service} reaches {', '.join(buckets)}")
    return 0


def mirror(run_id: str) -> int:
    s3 = client(os.environ["PNEUMONIA_S3_ACCESS_KEY"], os.environ["PNEUMONIA_S3_SECRET_KEY"])  # the report's account
    bucket, prefix = os.environ["PNEUMONIA_RESULTS_BUCKET"], f"runs/{run_id}/"
    count = 0
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
        for item in page.get("Contents", []):
            target = Path("/out") / run_id / item["Key"][len(prefix) :]
            target.parent.mkdir(parents=True, exist_ok=True)
            s3.download_file(bucket, item["Key"], str(target))
            count += 1
    if count == 0:
        print(f"nothing under s3://{bucket}/{prefix}", file=sys.stderr)
        return 1
    print(f"{count} objects copied to /out/{run_id}")
    return 0


if __name__ == "__main__":
    command, *arguments = sys.argv[1:] or ["ready"]
    sys.exit({"serve": serve, "ready": ready, "init": init, "mirror": mirror}[command](*arguments))
