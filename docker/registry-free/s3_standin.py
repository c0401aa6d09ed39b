"""What docker-compose.yml does with MinIO's `mc`, against the S3 stand-in (CI only; compose.s3-standin.yml).

    python /opt/s3_standin.py ready          # exit 0 when the S3 server at $S3_URL answers
    python /opt/s3_standin.py init           # make the four buckets (minio-init)
    python /opt/s3_standin.py mirror RUN_ID  # copy runs/RUN_ID of the results bucket to /out/RUN_ID (report)

The bucket names and the service's credentials come from the same PNEUMONIA_* variables the services read.
"""

from __future__ import annotations

import os
import sys
import urllib.request
from pathlib import Path

S3_URL = os.environ.get("S3_URL", "http://minio:9000")
BUCKET_VARIABLES = (
    "PNEUMONIA_DATASETS_BUCKET",
    "PNEUMONIA_SYNTHETIC_BUCKET",
    "PNEUMONIA_MODELS_BUCKET",
    "PNEUMONIA_RESULTS_BUCKET",
)


def client():  # noqa: ANN201 - boto3 is only in the stand-in's image
    import boto3

    return boto3.client(
        "s3",
        endpoint_url=S3_URL,
        aws_access_key_id=os.environ["PNEUMONIA_S3_ACCESS_KEY"],
        aws_secret_access_key=os.environ["PNEUMONIA_S3_SECRET_KEY"],
        region_name="us-east-1",
    )


def ready() -> int:
    with urllib.request.urlopen(f"{S3_URL}/moto-api/", timeout=3) as response:
        return 0 if response.status == 200 else 1


def init() -> int:
    s3 = client()
    existing = {bucket["Name"] for bucket in s3.list_buckets().get("Buckets", [])}
    for variable in BUCKET_VARIABLES:
        name = os.environ[variable]
        if name not in existing:
            s3.create_bucket(Bucket=name)
        print(f"bucket {name} is ready")
    return 0


def mirror(run_id: str) -> int:
    s3 = client()
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
    sys.exit({"ready": ready, "init": init, "mirror": mirror}[command](*arguments))
