# One image that runs the hpod server or a trainer worker.
#
#   docker build -t hpod .
#   docker run -p 50051:50051 hpod server --redis-url redis://redis:6379/0
#   docker run hpod worker --redis-url redis://redis:6379/0 --checkpoint-dir /ckpt
#
# CPU torch by default; for a GPU worker build with
#   --build-arg TORCH_INDEX=https://download.pytorch.org/whl/cu124 (any CUDA wheel index).
FROM python:3.11-slim

ARG TORCH_VERSION=2.13.0
ARG TORCH_INDEX=https://download.pytorch.org/whl/cpu

ENV PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1

RUN useradd --create-home --uid 10001 hpod
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

USER hpod
EXPOSE 50051
HEALTHCHECK --interval=15s --timeout=5s --start-period=30s \
    CMD python -c "import grpc,sys; from grpc_health.v1 import health_pb2 as h, health_pb2_grpc as g; \
s=g.HealthStub(grpc.insecure_channel('127.0.0.1:50051')); \
sys.exit(0 if s.Check(h.HealthCheckRequest(), timeout=3).status == 1 else 1)" || exit 1
ENTRYPOINT ["hpod"]
CMD ["server", "--port", "50051"]
