# The S3 server that stands in for MinIO on a machine that reaches no image registry, for CI only
# (prepare-host.sh builds it; compose.s3-standin.yml uses it). moto's S3 server, in memory: `docker compose down`
# forgets every object. Users run MinIO (docker-compose.yml).
ARG PYTHON_IMAGE=pneumonia-local/python:3.11-bookworm
FROM ${PYTHON_IMAGE}
ENV VIRTUAL_ENV=/opt/venv PATH=/opt/venv/bin:$PATH PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1
# moto and boto3 from the project's lock (requirements/s3-standin.txt, copied into the build context by
# prepare-host.sh), hash-checked: moto 5.2.6 authorizes ListObjectsV2 as `s3:ListObjectsV2`, where S3 and MinIO
# check `s3:ListBucket` (tests/test_storage_policies.py), so the version is the lock's, never the newest.
COPY s3-standin.txt /opt/s3-standin.txt
RUN python -m venv /opt/venv && pip install --require-hashes --no-deps -r /opt/s3-standin.txt
COPY s3_standin.py /opt/s3_standin.py
USER 10001:10001
EXPOSE 9000
CMD ["moto_server", "-H", "0.0.0.0", "-p", "9000"]
