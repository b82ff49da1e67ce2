# Two images from one Dockerfile, each non-root with a health check:
#
#   docker build --target server -t hpod-server .   # gRPC server: slim Python, CPU-only torch
#   docker build --target worker -t hpod-worker .   # trainer worker: CUDA-enabled PyTorch base
#   docker run -p 50051:50051 hpod-server server --redis-url redis://:PASSWORD@redis:6379/0
#   docker run --gpus 1 hpod-worker worker --redis-url redis://hpod-worker:PASSWORD@redis:6379/0
#
# The server never touches a GPU, but CARBS fits its Gaussian processes with BoTorch, which needs
# torch: the server gets the CPU wheel (a fraction of the CUDA build's size), imported only when
# a CARBS study runs. The worker keeps the CUDA build of torch its base image ships; it needs the
# host's NVIDIA driver (NVIDIA container toolkit, or the Kubernetes device plugin) for a GPU
# and runs on the CPU without one. The default base is CUDA 12.6 (driver >= 560, or >= 525
# through CUDA's minor version compatibility); for GPUs that need CUDA 13 (driver >= 580):
#   --build-arg WORKER_BASE=pytorch/pytorch:2.13.0-cuda13.0-cudnn9-runtime
#
# Pinned: the base images by tag (add @sha256:... from `docker buildx imagetools inspect` to pin
# by digest), torch by TORCH_VERSION / the worker base, every other library by
# deploy/constraints.txt (scripts/image_constraints.py writes it from the tested environment).
# Configuration is by environment (HPOD_REDIS_URL, HPOD_TLS_*, HPOD_TOKENS_FILE, ...): see
# docker-compose.yml and deploy/. CI lints this file with hadolint (tests/test_deploy.py).
ARG PYTHON_IMAGE=python:3.11.11-slim-bookworm
ARG WORKER_BASE=pytorch/pytorch:2.13.0-cuda12.6-cudnn9-runtime

# ---------------------------------------------------------------- hpod as a wheel (both images)
FROM ${PYTHON_IMAGE} AS wheel
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /src
COPY pyproject.toml README.md ./
COPY hpod ./hpod
COPY proto ./proto
COPY server ./server
COPY client ./client
COPY trainers ./trainers
RUN pip wheel --no-deps --wheel-dir /wheels .

# ---------------------------------------------------------------- server: a virtualenv
FROM ${PYTHON_IMAGE} AS server-build
ARG TORCH_VERSION=2.13.0
ARG HPOD_VERSION=0.1.0
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 PATH=/opt/hpod/bin:$PATH
RUN python -m venv /opt/hpod
COPY deploy/constraints.txt /tmp/constraints.txt
COPY --from=wheel /wheels /tmp/wheels
# torch alone from the CPU index (a bare torch requirement would pull the CUDA build); its
# dependencies and everything else from PyPI, at the pinned versions.
RUN pip install --no-deps --index-url https://download.pytorch.org/whl/cpu \
        "torch==${TORCH_VERSION}" \
    && pip install -c /tmp/constraints.txt "hpod[server] @ file:///tmp/wheels/hpod-${HPOD_VERSION}-py3-none-any.whl" \
    && python -c "import torch, hpod.server.main; assert torch.version.cuda is None"

FROM ${PYTHON_IMAGE} AS server
ARG HPOD_VERSION=0.1.0
ARG PYTHON_IMAGE
LABEL org.opencontainers.image.title="hpod-server" \
      org.opencontainers.image.description="hpod gRPC hyperparameter-optimisation server" \
      org.opencontainers.image.version="${HPOD_VERSION}" \
      org.opencontainers.image.base.name="${PYTHON_IMAGE}"
ENV PYTHONUNBUFFERED=1 PATH=/opt/hpod/bin:$PATH HPOD_PORT=50051
RUN useradd --create-home --uid 10001 hpod
COPY --from=server-build /opt/hpod /opt/hpod
# Numeric, so that Kubernetes' runAsNonRoot can verify it without reading /etc/passwd.
USER 10001
WORKDIR /home/hpod
EXPOSE 50051 9100
# gRPC health checking, over TLS when HPOD_TLS_CERT is set (see server/healthcheck.py).
HEALTHCHECK --interval=15s --timeout=5s --start-period=30s --retries=3 \
    CMD ["python", "-m", "hpod.server.healthcheck"]
ENTRYPOINT ["hpod"]
CMD ["server", "--port", "50051"]

# ---------------------------------------------------------------- worker: CUDA PyTorch base
FROM ${WORKER_BASE} AS worker
ARG HPOD_VERSION=0.1.0
ARG WORKER_BASE
LABEL org.opencontainers.image.title="hpod-worker" \
      org.opencontainers.image.description="hpod trainer worker (one per GPU)" \
      org.opencontainers.image.version="${HPOD_VERSION}" \
      org.opencontainers.image.base.name="${WORKER_BASE}"
ENV PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 \
    NVIDIA_VISIBLE_DEVICES=all NVIDIA_DRIVER_CAPABILITIES=compute,utility \
    HPOD_CHECKPOINT_DIR=/ckpt
# The checkpoint mount point belongs to the user, so a fresh named volume is writable too.
RUN useradd --create-home --uid 10001 hpod && mkdir /ckpt && chown 10001:10001 /ckpt
COPY deploy/constraints.txt /tmp/constraints.txt
COPY --from=wheel /wheels /tmp/wheels
# The base's torch stays (pinned by a constraint on its own version); the rest is pinned as for
# the server. The base's Python may be marked externally managed (PEP 668): this image is it.
RUN python3 -c "import torch; print('torch==' + torch.__version__)" > /tmp/torch.txt \
    && PIP_BREAK_SYSTEM_PACKAGES=1 python3 -m pip install -c /tmp/constraints.txt \
        -c /tmp/torch.txt \
        "hpod[worker] @ file:///tmp/wheels/hpod-${HPOD_VERSION}-py3-none-any.whl" \
    && python3 -c "import torch, hpod.trainers.worker; assert torch.version.cuda, torch.__version__" \
    && rm -rf /tmp/wheels /tmp/constraints.txt /tmp/torch.txt
USER 10001
WORKDIR /home/hpod
# A worker of this container heartbeated to Redis lately (see trainers/healthcheck.py).
HEALTHCHECK --interval=30s --timeout=10s --start-period=120s --retries=3 \
    CMD ["python3", "-m", "hpod.trainers.healthcheck"]
ENTRYPOINT ["hpod"]
CMD ["worker", "--checkpoint-dir", "/ckpt"]
