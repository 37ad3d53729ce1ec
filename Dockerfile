# One image for every app service of docker-compose.yml: the trainer job, the
# index service and the query service differ only in their command.
#
#   docker build -t recsys-retrieval .
#
# No data set is copied in: the MovieLens licence forbids redistributing it, and
# the compose demo trains on the synthetic data set the trainer generates.
FROM python:3.11-slim-bookworm

# TF_CPP_MIN_LOG_LEVEL and GRPC_VERBOSITY: the native libraries' info lines off, their errors kept
# (docs/DEPLOY.md, "Logs").
ENV PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    TF_CPP_MIN_LOG_LEVEL=2 \
    GRPC_VERBOSITY=ERROR \
    RECSYS_REGISTRY=/registry

WORKDIR /src

# Every dependency (TensorFlow, ScaNN, grpcio, hdrhistogram...) ships a
# manylinux wheel for CPython 3.11 on x86_64, so no compiler is needed.
#
# Dependencies first, in their own layer: with only the metadata copied, the
# package itself is empty, so this layer (about 2 GB, mostly TensorFlow) is
# rebuilt only when pyproject.toml changes, not on every source edit.
COPY pyproject.toml README.md ./
RUN pip install . && pip uninstall -y recsys-retrieval

# Then the sources (what .dockerignore lets through: the package folders that
# pyproject.toml declares), installed without touching the dependencies. The
# console scripts must at least start: --help imports every CLI module.
COPY . .
RUN pip install --no-deps . \
    && cd / && rm -rf /src \
    && recsys-train --help >/dev/null \
    && recsys-index-service --help >/dev/null \
    && recsys-query-service --help >/dev/null \
    && recsys-client --help >/dev/null

# Run as an unprivileged user. /registry is created here, owned by that user,
# so a named volume mounted there starts out writable by it.
RUN useradd --system --uid 10001 --create-home --home-dir /home/recsys recsys \
    && mkdir -p /registry \
    && chown recsys:recsys /registry
USER recsys
WORKDIR /home/recsys
VOLUME ["/registry"]

# gRPC ports by convention: index service 50051, query service 50052.
EXPOSE 50051 50052

CMD ["recsys-client", "--help"]
