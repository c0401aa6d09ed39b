#!/usr/bin/env bash
# make compose-smoke: the compose stack end to end on a machine with no Docker and no image registry (CI's kind).
#  1. prepare-host.sh: Docker Engine, Compose v2, dockerd, local base images and CI's S3 stand-in for MinIO
#  2. build every image (BuildKit shares the torch + core layers), write a small phantom dataset with the pipeline
#     image
#  3. make experiment PROFILE=smoke STOP=0: every service healthy, the orchestrator completes, the report is copied out
#  4. TorchServe answers on the published ports, REST and gRPC, with the inference key read as the docs say; its
#     management port is not published; MLflow holds the run and the registered models; the v2 runtime answers the
#     same for the served archive; the web page classifies with the operator's token
#  5. down -v, and nothing of the project is left: no container, volume or network
# A throwaway project (pneumonia-smoke) with throwaway secrets; a user's own stack and .env are not touched.
set -euo pipefail
cd "$(dirname "$0")/../.."
HERE=docker/registry-free
PROJECT=pneumonia-smoke
say() { printf '[compose-smoke] %s\n' "$*" >&2; }
seconds() { echo $(($(date +%s) - $1)); }

t0=$(date +%s)
settings="$(bash "$HERE/prepare-host.sh")"
eval "export $(echo "$settings" | tr '\n' ' ')"
t_prepare=$(seconds "$t0")

work="$(mktemp -d /tmp/compose-smoke.XXXXXX)"
secret() { python3 -c 'import secrets; print(secrets.token_hex(16))'; }
cat >"$work/smoke.env" <<SETTINGS
COMPOSE_PROJECT_NAME=$PROJECT
MINIO_ROOT_USER=smoke-root
MINIO_ROOT_PASSWORD=$(secret)
PNEUMONIA_TRAINER_S3_SECRET_KEY=$(secret)
PNEUMONIA_GENERATOR_S3_SECRET_KEY=$(secret)
PNEUMONIA_ANALYZER_S3_SECRET_KEY=$(secret)
PNEUMONIA_ORCHESTRATOR_S3_SECRET_KEY=$(secret)
PNEUMONIA_WEB_S3_SECRET_KEY=$(secret)
PNEUMONIA_ORCHESTRATOR_TOKEN=$(secret)$(secret)
PNEUMONIA_OPERATOR_TOKEN=$(secret)$(secret)
PNEUMONIA_PUBLISH_HOST=127.0.0.1
SETTINGS
export COMPOSE_PROJECT_NAME=$PROJECT COMPOSE_BAKE=false PNEUMONIA_VARIANT=cuda
COMPOSE="docker compose -f docker-compose.yml -f $HERE/compose.s3-standin.yml"
compose() { $COMPOSE --env-file "$work/smoke.env" "$@"; }
cleanup() {
    COMPOSE_PROFILES=cpu,experiment compose down -v --remove-orphans >/dev/null 2>&1 || true
    rm -rf "$work"
}
trap cleanup EXIT

say "building the images"
t1=$(date +%s)
COMPOSE_PROFILES=cpu,experiment compose build --quiet
t_build=$(seconds "$t1")
pipeline_image="pneumonia/pipeline:0.1.0-cuda"

say "writing a phantom dataset"
mkdir -p "$work/data" && chmod 777 "$work/data"
docker run --rm --network none --user 10001:10001 -v "$work/data:/data" "$pipeline_image" \
    pneumonia download-dataset --dataset phantom --data-dir /data/phantom --num-patients 160 --image-size 32 >/dev/null

say "make experiment PROFILE=smoke through docker-compose"
t2=$(date +%s)
make --no-print-directory experiment DEVICE=cpu VARIANT=cuda PROFILE=smoke DATASET=phantom STOP=0 \
    DATA_DIR="$work/data/phantom" REPORT_DIR="$work/results" ENV_FILE="$work/smoke.env" COMPOSE="$COMPOSE"
t_experiment=$(seconds "$t2")

say "checking the services, the report and the log"
for service in minio trainer-cpu generator classifier classifier-oip analyzer mlflow web; do
    health="$(docker inspect --format '{{.State.Status}} {{if .State.Health}}{{.State.Health.Status}}{{end}}' \
        "$(COMPOSE_PROFILES=cpu compose ps -q "$service")")"
    [ "$health" = "running healthy" ] || { say "FAIL: $service is '$health'"; exit 1; }
done
run_dir="$(find "$work/results" -mindepth 1 -maxdepth 1 -type d -print -quit)"
[ -s "$run_dir/analysis/comparison_report.txt" ] || { say "FAIL: no report in $run_dir"; exit 1; }
[ -s "$run_dir/experiment.log" ] || { say "FAIL: empty experiment.log in $run_dir"; exit 1; }
grep -q "experiment step train-gan finished" "$run_dir/experiment.log" \
    || { say "FAIL: experiment.log lacks the orchestrator's log lines"; exit 1; }

say "TorchServe on the published ports: REST and gRPC with the inference key from key_file.json; the generator's API"
mkdir -m 755 "$work/client"  # what a client holds: the inference key file and an image (the image's user reads it)
compose exec -T classifier cat /var/lib/pneumonia/torchserve/key_file.json >"$work/client/key_file.json"
cp "$(find "$work/data/phantom" -name '*.png' -print -quit)" "$work/client/probe.png"
chmod 644 "$work/client/key_file.json" "$work/client/probe.png"
operator_token="$(sed -n 's/^PNEUMONIA_OPERATOR_TOKEN=//p' "$work/smoke.env")"
# the archive TorchServe downloaded into the model store, which the v2 runtime reads (read-only) under its file name
oip_model="$(compose exec -T classifier-oip ls /mnt/models | sed -n 's/\.mar$//p' | head -n 1)"
[ -n "$oip_model" ] || { say "FAIL: no .mar in the v2 runtime's model directory"; exit 1; }
docker run -i --rm --network host -v "$work/client:/smoke:ro" -e OPERATOR_TOKEN="$operator_token" \
    -e OIP_MODEL="$oip_model" "$pipeline_image" \
    python - <<'PYTHON'
import base64, json, os, socket, urllib.error, urllib.request
from services.classifier.client import ClassifierClient, ClassifierError, TorchServeKeys

keys = json.load(open("/smoke/key_file.json"))
image = open("/smoke/probe.png", "rb").read()
client = ClassifierClient("http://127.0.0.1:8080", "http://127.0.0.1:8081", "127.0.0.1:7070",
                          keys=TorchServeKeys(keys["inference"]["key"], "not-handed-to-clients"))
assert client.ping() == "Healthy"
rest, grpc = client.predict("pneumonia", image), client.predict_grpc("pneumonia", image)
assert rest["label"] in ("normal", "pneumonia"), rest
assert abs(rest["pneumonia_probability"] - grpc["pneumonia_probability"]) < 1e-6, (rest, grpc)
stranger = ClassifierClient("http://127.0.0.1:8080", "http://127.0.0.1:8081", "127.0.0.1:7070",
                            keys=TorchServeKeys("a-wrong-key", "a-wrong-key"))
try:
    stranger.predict("pneumonia", image)
    raise SystemExit("TorchServe answered a request with a wrong key")
except ClassifierError as refused:
    assert refused.key_refused, refused
def generate_status(token):
    headers = {"Content-Type": "application/json", **({"Authorization": f"Bearer {token}"} if token else {})}
    request = urllib.request.Request("http://127.0.0.1:8082/v1/generate", b"{}", headers)
    try:
        return urllib.request.urlopen(request, timeout=30).status
    except urllib.error.HTTPError as answer:
        return answer.code
with urllib.request.urlopen("http://127.0.0.1:8082/healthz", timeout=30) as health:  # probes need no token
    assert health.status == 200
assert generate_status(None) == 401 and generate_status("a-wrong-token-" * 3) == 401
assert generate_status(os.environ["OPERATOR_TOKEN"]) == 422  # let in: the empty body is what is refused
# MLflow (published for a person's browser): the run was logged and every strategy's model registered, the alias
# "served" on the version TorchServe serves.
with urllib.request.urlopen("http://127.0.0.1:5000/api/2.0/mlflow/registered-models/search?max_results=100") as r:
    registered = {m["name"]: m for m in json.load(r)["registered_models"]}
assert {"pneumonia-baseline", "pneumonia-augmented"} <= set(registered), sorted(registered)
served = [name for name, m in registered.items() if any(a["alias"] == "served" for a in m.get("aliases", []))]
assert len(served) == 1, registered
# The v2 runtime (classifier-oip): the archive TorchServe serves, loaded from the shared model store, answers the
# same over the Open Inference Protocol; without a token it is refused.
def v2(path, body=None, token=os.environ["OPERATOR_TOKEN"]):
    headers = {"Content-Type": "application/json", **({"Authorization": f"Bearer {token}"} if token else {})}
    request = urllib.request.Request(f"http://127.0.0.1:8085{path}", body, headers, method="POST")
    try:
        with urllib.request.urlopen(request, timeout=120) as answer:
            return answer.status, json.load(answer)
    except urllib.error.HTTPError as answer:
        return answer.code, None
model = os.environ["OIP_MODEL"]
assert v2(f"/v2/repository/models/{model}/load", b"{}")[0] == 200
infer = json.dumps({"inputs": [{"name": "image", "shape": [1], "datatype": "BYTES",
                                "data": [base64.b64encode(image).decode()]}]}).encode()
status, v2_answer = v2(f"/v2/models/{model}/infer", infer)
assert status == 200, status
outputs = {o["name"]: o["data"][0] for o in v2_answer["outputs"]}
assert abs(outputs["pneumonia_probability"] - rest["pneumonia_probability"]) < 1e-5, (outputs, rest)
assert outputs["label"] == rest["label"] and v2_answer["model_version"] == rest["model_version"], (v2_answer, rest)
assert v2_answer["parameters"]["registered_model"] == rest["registered_model"], (v2_answer, rest)
assert v2(f"/v2/models/{model}/infer", infer, token=None)[0] == 401
# The web page: open pages, the operator's token for its API, TorchServe's answer with its Grad-CAM.
with urllib.request.urlopen("http://127.0.0.1:8090/", timeout=30) as page:
    assert b"Not for clinical use" in page.read()
def classify(token):
    request = urllib.request.Request("http://127.0.0.1:8090/api/classify", image,
                                     {"Content-Type": "application/octet-stream", "Authorization": f"Bearer {token}"})
    try:
        with urllib.request.urlopen(request, timeout=120) as answer:
            return answer.status, json.load(answer)
    except urllib.error.HTTPError as answer:
        return answer.code, None
status, page_answer = classify(os.environ["OPERATOR_TOKEN"])
assert status == 200 and page_answer["label"] == rest["label"], (status, page_answer)
assert page_answer["overlay"].startswith("data:image/png;base64,"), page_answer.get("overlay_note")
assert classify("a-wrong-token-" * 3)[0] == 401
for port in (8081, 7071, 8083, 9000):  # management, metrics and storage stay on the compose network
    with socket.socket() as s:
        assert s.connect_ex(("127.0.0.1", port)) != 0, f"port {port} is published"
print(f"REST, gRPC, v2 and the web page agree: {rest}; MLflow registered {sorted(registered)}, serving {served[0]}")
PYTHON

say "inside the network: a call without a token is refused, and each account has only its service's rights"
COMPOSE_PROFILES=cpu compose exec -T trainer-cpu python - <<'PYTHON'
import grpc
from pneumonia_proto.v1 import trainer_pb2, trainer_pb2_grpc

with grpc.insecure_channel("127.0.0.1:50051") as channel:
    try:
        trainer_pb2_grpc.TrainerServiceStub(channel).GetJob(trainer_pb2.GetJobRequest(job_id="x"), timeout=30)
        raise SystemExit("the trainer answered a call without a token")
    except grpc.RpcError as refused:
        assert refused.code() == grpc.StatusCode.UNAUTHENTICATED, refused
print("the trainer refused a call without a token")
PYTHON
COMPOSE_PROFILES=cpu compose exec -T generator python - <<'PYTHON'
from shared.storage import StorageError, open_store

store = open_store()
try:
    store.put_bytes("models", "smoke/not-the-generators.bin", b"x")
    raise SystemExit("the generator's account wrote to the models bucket")
except StorageError as refused:
    assert "AccessDenied" in str(refused), refused
print("the generator's account may not write to models")
PYTHON

say "down -v"
COMPOSE_PROFILES=cpu,experiment compose down -v --remove-orphans
left="$(docker ps -aq --filter "label=com.docker.compose.project=$PROJECT")$(docker volume ls -q \
    --filter "label=com.docker.compose.project=$PROJECT")$(docker network ls -q \
    --filter "label=com.docker.compose.project=$PROJECT")"
[ -z "$left" ] || { say "FAIL: down -v left: $left"; exit 1; }

docker image prune --force --filter label=io.pneumonia.variant >/dev/null  # our superseded builds only
say "passed: prepare ${t_prepare} s, build ${t_build} s, experiment ${t_experiment} s, total $(seconds "$t0") s"
docker system df >&2
