# The SDK harness image: Beam's Python SDK image of the pinned version with dpipe installed. It runs as the
# worker pool beside each TaskManager (`--worker_pool`, the image's entrypoint is Beam's boot), and as the
# gateway and the job submitter (`python -m pipelines.gateway|stream|backfill`).
# Build from the repository root: `make sdk-image` (docker build -f templates/flink/sdk.Dockerfile .).
ARG BEAM_VERSION=2.77.0
FROM apache/beam_python3.11_sdk:${BEAM_VERSION}

WORKDIR /opt/dpipe
COPY pyproject.toml README.md ./
COPY pipelines pipelines
COPY transforms transforms
COPY connectors connectors
COPY templates templates
# dpipe and its pinned dependencies (apache-beam[gcp,aws] of the same version as the base image).
RUN pip install --no-cache-dir . && python -c "import pipelines.stream, pipelines.backfill"
