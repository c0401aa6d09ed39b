"""Each service's storage account has the rights its policy (k8s/base/storage-policies/<service>.json, which
minio-init gives it in MinIO) grants and no others, checked by an S3 server that enforces IAM policies (moto, with
the S3 stand-in's accounts) through our S3Store.

What these tests rely on: the stand-in authorizes each request with the IAM action S3 and MinIO use for it, so that a
policy that works here works there. ListObjects(V2) is `s3:ListBucket` on the bucket, GetObject and HeadObject are
`s3:GetObject` on the object (AWS's "Actions, resources, and condition keys for Amazon S3"; MinIO's policy engine
does the same). moto 5.2.6 broke this: its `BaseResponse._get_action` stopped reading the action S3's handler sets
and asks for `s3:ListObjectsV2`, `s3:ListObjects` and `s3:HeadObject`, names no real policy can hold, so the lock
keeps moto 5.2.5 (pyproject.toml excludes 5.2.6). `test_the_stand_in_names_actions_as_s3_and_minio_do` fails first
and says so when a moto release does it again.
"""

from __future__ import annotations

import json
import secrets
import sys
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from storage_server import free_port

from shared.storage import S3Store, StorageError

ROOT = Path(__file__).resolve().parent.parent
POLICIES = ROOT / "k8s" / "base" / "storage-policies"
sys.path.insert(0, str(ROOT / "docker" / "registry-free"))
import s3_standin  # noqa: E402

BUCKETS = ("datasets", "synthetic", "models", "results")
# What each service does with each bucket (services/*, pipeline/through_services.py): r = list and read,
# w = write, d = delete. Stated here independently of the policy files, which must grant exactly this.
RIGHTS = {
    "trainer": {"datasets": "r", "synthetic": "r", "models": "rw", "results": "rw"},
    "generator": {"models": "r", "synthetic": "rwd"},
    "analyzer": {"datasets": "r", "synthetic": "r", "models": "r", "results": "rwd"},
    "orchestrator": {"datasets": "rw", "synthetic": "rw", "models": "rw", "results": "rw"},
    # the web page reads reports, and the checkpoints' sha256 to tell which run's model TorchServe serves
    "web": {"models": "r", "results": "r"},
}
PROBE = "probe/object.bin"


@pytest.fixture(scope="module")
def server() -> Iterator[tuple[str, dict[str, S3Store]]]:
    """moto's S3 server with the four buckets (a probe object in each), the accounts, and policies enforced."""
    from moto.server import ThreadedMotoServer

    port = free_port()
    moto = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    moto.start()
    endpoint = f"127.0.0.1:{port}"
    setup = S3Store(endpoint, "setup", "setup-secret", secure=False, region="us-east-1", retries=1)
    for bucket in BUCKETS:
        setup.ensure_bucket(bucket)
        setup.put_bytes(bucket, PROBE, b"probe")
    keys = {service: (f"pneumonia-{service}", secrets.token_hex(16)) for service in RIGHTS}
    s3_standin.install_accounts(
        {
            access: (access, secret, (POLICIES / f"{service}.json").read_text())
            for service, (access, secret) in keys.items()
        }
    )
    s3_standin.enforce_policies()
    try:
        stores = {
            service: S3Store(endpoint, access, secret, secure=False, region="us-east-1", retries=1)
            for service, (access, secret) in keys.items()
        }
        yield endpoint, stores
    finally:
        s3_standin.enforce_policies(False)
        moto.stop()


def allowed(action) -> bool:  # noqa: ANN001
    try:
        action()
    except StorageError as error:
        assert "AccessDenied" in str(error), error
        return False
    return True


def test_the_policy_files_cover_exactly_the_services() -> None:
    assert sorted(path.stem for path in POLICIES.glob("*.json")) == sorted(RIGHTS)
    for path in POLICIES.glob("*.json"):
        document = json.loads(path.read_text())
        actions = {action for statement in document["Statement"] for action in statement["Action"]}
        assert not {"s3:*", "s3:CreateBucket", "s3:DeleteBucket", "s3:PutBucketPolicy"} & actions, path.name
        assert all(statement["Effect"] == "Allow" for statement in document["Statement"])


def granted(store: S3Store, bucket: str, name: str) -> str:
    """What `store`'s account may do in `bucket`: r (list and read), w (write), d (delete), as RIGHTS spells it."""
    can_list = allowed(lambda: list(store.list(bucket, "probe/")))
    can_read = allowed(lambda: store.get_bytes(bucket, PROBE))
    assert can_list == can_read, (name, bucket)
    can_write = allowed(lambda: store.put_bytes(bucket, f"{name}/written.bin", b"x"))
    can_delete = allowed(lambda: store.delete(bucket, f"{name}/absent.bin"))  # S3 deletes a missing key too
    return "r" * can_read + "w" * can_write + "d" * can_delete


@pytest.mark.parametrize("service", RIGHTS)
def test_each_account_can_do_what_its_service_does_and_nothing_else(
    service: str, server: tuple[str, dict[str, S3Store]]
) -> None:
    store = server[1][service]
    assert {bucket: granted(store, bucket, service) for bucket in BUCKETS} == {
        bucket: RIGHTS[service].get(bucket, "") for bucket in BUCKETS
    }
    for bucket in RIGHTS[service]:
        store.ensure_bucket(bucket)  # every service checks its buckets (HeadBucket) before it uses them


def test_the_stand_in_names_actions_as_s3_and_minio_do(server: tuple[str, dict[str, S3Store]]) -> None:
    """An account whose policy holds only `s3:ListBucket` on a bucket and `s3:GetObject` on its objects lists (V2),
    reads and stats objects, and nothing more."""
    import moto

    endpoint, _ = server
    policy = {
        "Version": "2012-10-17",
        "Statement": [
            {"Effect": "Allow", "Action": ["s3:ListBucket"], "Resource": ["arn:aws:s3:::models"]},
            {"Effect": "Allow", "Action": ["s3:GetObject"], "Resource": ["arn:aws:s3:::models/*"]},
        ],
    }
    access, secret = "pneumonia-minimal", secrets.token_hex(16)
    s3_standin.install_accounts({access: (access, secret, json.dumps(policy))})
    store = S3Store(endpoint, access, secret, secure=False, region="us-east-1", retries=1)
    behaviour = f"moto {moto.__version__} does not authorize requests as S3 and MinIO do (see this module's docstring)"
    assert allowed(lambda: list(store.list("models", "probe/"))), f"ListObjectsV2 under s3:ListBucket: {behaviour}"
    assert allowed(lambda: store.get_bytes("models", PROBE)), f"GetObject under s3:GetObject: {behaviour}"
    assert allowed(lambda: store.exists("models", PROBE)), f"HeadObject under s3:GetObject: {behaviour}"
    assert not allowed(lambda: store.put_bytes("models", "minimal/written.bin", b"x"))
    assert not allowed(lambda: list(store.list("results", "probe/")))


def test_a_wrong_secret_is_refused(server: tuple[str, dict[str, S3Store]]) -> None:
    endpoint, _ = server
    stranger = S3Store(endpoint, "pneumonia-trainer", "not-its-secret", secure=False, region="us-east-1", retries=1)
    with pytest.raises(StorageError, match="SignatureDoesNotMatch|AccessDenied|InvalidAccessKeyId"):
        stranger.get_bytes("models", PROBE)


def test_a_presigned_url_from_the_orchestrator_serves_torchserve(server: tuple[str, dict[str, S3Store]]) -> None:
    """TorchServe has no account: it downloads an archive by a URL the orchestrator signed. (The stand-in cannot
    check a presigned URL's rights; MinIO gives it its signer's.)"""
    url = server[1]["orchestrator"].presigned_get_url("models", PROBE)
    with urllib.request.urlopen(url, timeout=10) as response:
        assert response.read() == b"probe"
