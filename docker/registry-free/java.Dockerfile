# A stand-in for the Temurin JRE image on a machine that reaches no image registry (prepare-host.sh builds it):
# Debian bookworm's OpenJDK 17, as a self-contained copy under /opt/java/openjdk (symlinks resolved), where the
# classifier's Dockerfile copies a JRE from.
ARG PYTHON_IMAGE=pneumonia-local/python:3.11-bookworm
FROM ${PYTHON_IMAGE}
SHELL ["/bin/bash", "-o", "pipefail", "-euc"]
RUN apt-get update \
    && apt-get install -y --no-install-recommends openjdk-17-jre-headless=17.* \
    && mkdir -p /opt/java \
    && cp -aL "$(dirname "$(dirname "$(readlink -f "$(command -v java)")")")" /opt/java/openjdk \
    && /opt/java/openjdk/bin/java -version \
    && rm -rf /var/lib/apt/lists/*
