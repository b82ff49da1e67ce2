# One image that runs the hpod server or a trainer worker.
#
#   docker build -t hpod .                                   # server and CPU workers
#   docker build -t hpod-gpu \
#     --build-arg TORCH_INDEX=https://download.pytorch.org/whl/cu128 .   # GPU workers
#   docker run -p 50051:50051 hpod server --redis-url redis://redis:6379/0
#   docker run --gpus 1 hpod-gpu worker --redis-url redis://redis:6379/0 --checkpoint-dir /ckpt
#
# The CUDA wheels of PyTorch bundle the CUDA runtime, so the GPU image needs only the host's
# NVIDIA driver (NVIDIA container toolkit / the Kubernetes device plugin), not a CUDA base.
# Configuration is by environment (HPOD_REDIS_URL, HPOD_TLS_*, HPOD_TOKENS_FILE, ...): see
# docker-compose.yml and deploy/.
FROM python:3.11.11-slim-bookworm

ARG TORCH_VERSION=2.13.0
ARG TORCH_INDEX=https://download.pytorch.org/whl/cpu

ENV PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 \
    HPOD_PORT=50051

# The checkpoint mount point belongs to the user, so a fresh named volume is writable too.
RUN useradd --create-home --uid 10001 hpod && mkdir /ckpt && chown 10001:10001 /ckpt
WORKDIR /app

# torch first, from the chosen index: a bare torch requirement would pull the default build.
RUN pip install "torch==${TORCH_VERSION}" --index-url "${TORCH_INDEX}"

COPY pyproject.toml README.md ./
COPY hpod ./hpod
COPY proto ./proto
COPY server ./server
COPY client ./client
COPY trainers ./trainers
RUN pip install .

# Numeric, so that Kubernetes' runAsNonRoot can verify it without reading /etc/passwd.
USER 10001
EXPOSE 50051 9100
# gRPC health checking, over TLS when HPOD_TLS_CERT is set (see server/healthcheck.py).
HEALTHCHECK --interval=15s --timeout=5s --start-period=30s \
    CMD ["python", "-m", "hpod.server.healthcheck"]
ENTRYPOINT ["hpod"]
CMD ["server", "--port", "50051"]
