#!/usr/bin/env bash
# The experiment as Kubernetes Jobs, one step after the other (`make k8s-experiment`; docs/deployment.md):
#
#   k8s/experiment.sh OVERLAY_DIR [DATA_DIR] [OUT_DIR]
#
# 1. uploads DATA_DIR (PneumoniaMNIST's npz directory; skipped when empty) to the datasets bucket through a
#    port-forward to MinIO, with this project's own storage code (.venv, `make install`);
# 2. re-creates the step Jobs of OVERLAY_DIR (suspended) and resumes them in order: prepare-data, train-gan,
#    generate-synthetic, the four train-classifier strategies together, analyze-results, publish-results,
#    track-experiment (into the MLflow server, k8s/base/mlflow.yaml);
#    a failed step stops the run and shows its logs;
# 3. copies the results (runs/k8s/ in the results bucket) to OUT_DIR/<time>/.
#
# Environment: KUBECTL (default kubectl), PYTHON (default .venv/bin/python), MINIO_LOCAL_PORT (default 19000),
# STEP_TIMEOUT seconds per step (default 86400). Credentials come from k8s/base/secrets.env.
set -euo pipefail

overlay=${1:?usage: k8s/experiment.sh OVERLAY_DIR [DATA_DIR] [OUT_DIR]}
data_dir=${2:-}
out_dir=${3:-results/k8s}
kubectl=${KUBECTL:-kubectl}
python=${PYTHON:-.venv/bin/python}
namespace=pneumonia
secrets=k8s/base/secrets.env
step_label=app.kubernetes.io/component=experiment-step

k() { "$kubectl" -n "$namespace" "$@"; }

# Run "$@" with our storage variables pointing at MinIO through a port-forward.
with_minio() {
    local port=${MINIO_LOCAL_PORT:-19000} pf status=0
    k port-forward svc/minio "$port:9000" >/dev/null &
    pf=$!
    sleep 3
    env PNEUMONIA_STORAGE_BACKEND=s3 PNEUMONIA_S3_ENDPOINT="127.0.0.1:$port" PNEUMONIA_S3_SECURE=false \
        PNEUMONIA_S3_ACCESS_KEY=pneumonia-orchestrator \
        PNEUMONIA_S3_SECRET_KEY="$(sed -n 's/^PNEUMONIA_ORCHESTRATOR_S3_SECRET_KEY=//p' "$secrets")" \
        "$@" || status=$?
    kill "$pf" 2>/dev/null || true
    return "$status"
}

# Wait until Job $1 has completed (0) or failed (1, after showing its logs).
wait_job() {
    local job=$1 deadline=$((SECONDS + ${STEP_TIMEOUT:-86400})) conditions
    while ((SECONDS < deadline)); do
        conditions=$(k get job "$job" -o jsonpath='{range .status.conditions[?(@.status=="True")]}{.type} {end}')
        case " $conditions " in
        *" Complete "*)
            echo "step $job: complete"
            return 0
            ;;
        *" Failed "*)
            echo "step $job failed; the last lines of its logs:" >&2
            k logs "job/$job" --all-containers --tail=40 >&2 || true
            return 1
            ;;
        esac
        sleep 10
    done
    echo "step $job: not finished after ${STEP_TIMEOUT:-86400} s" >&2
    return 1
}

# Resume the Jobs named as arguments together, then wait for each.
run_steps() {
    local job
    for job in "$@"; do
        k patch job "$job" --type=merge -p '{"spec":{"suspend":false}}' >/dev/null
        echo "step $job: started"
    done
    for job in "$@"; do
        wait_job "$job"
    done
}

test -s "$secrets" || { echo "$secrets is missing: copy $secrets.example and fill it in" >&2; exit 2; }
k rollout status statefulset/minio --timeout=300s
k wait --for=condition=complete job/minio-init --timeout=300s

if [[ -n "$data_dir" ]]; then
    echo "uploading $data_dir to the datasets bucket"
    with_minio "$python" -c '
import sys
from pathlib import Path
from shared.storage import open_store
from shared.storage.sync import upload_dir
store = open_store()
refs = upload_dir(store, Path(sys.argv[1]), "datasets", "pneumoniamnist/")
print(f"uploaded {len(refs)} files to s3://datasets/pneumoniamnist/")
' "$data_dir"
fi

# Fresh Jobs (a finished Job cannot run again), created suspended, then resumed step by step.
k delete job -l "$step_label" --ignore-not-found --wait=true
"$kubectl" apply -k "$overlay" -l "$step_label"
run_steps prepare-data
run_steps train-gan
run_steps generate-synthetic
run_steps train-classifier-baseline train-classifier-baseline-matched train-classifier-augmented train-classifier-curriculum
run_steps analyze-results
run_steps publish-results
run_steps track-experiment

target="$out_dir/$(date -u +%Y%m%d-%H%M%S)"
with_minio "$python" -c '
import sys
from pathlib import Path
from shared.storage import open_store
from shared.storage.sync import download_prefix
download_prefix(open_store(), "results", "runs/k8s/", Path(sys.argv[1]))
' "$target"
echo "results: $target (report: $target/analysis/comparison_report.txt)"
