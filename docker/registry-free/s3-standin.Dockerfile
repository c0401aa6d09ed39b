# The S3 server that stands in for MinIO on a machine that reaches no image registry, for CI only
# (prepare-host.sh builds it; compose.s3-standin.yml uses it). moto's S3 server, in memory: `docker compose down`
# forgets every object. Users run MinIO (docker-compose.yml).
ARG PYTHON_IMAGE=pneumonia-local/python:3.11-bookworm
FROM ${PYTHON_IMAGE}
ENV VIRTUAL_ENV=/opt/venv PATH=/opt/venv/bin:$PATH PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1
RUN python -m venv /opt/venv && pip install "moto[server]==5.2.5" "boto3==1.44.8"
COPY s3_standin.py /opt/s3_standin.py
USER 10001:10001
EXPOSE 9000
CMD ["moto_server", "-H", "0.0.0.0", "-p", "9000"]
