# syntax=docker/dockerfile:1
#
# One image for the three giftcoin services; the command chooses one (deploy/ sets it):
#   python -m services.wallet  [serve|migrate]     (also services.gifting, services.payout)
# Build:  make image (podman; docker/build-image.sh), or docker build -t giftcoin:dev .
#
# The base image is pinned by digest (the multi-platform index of python:3.11-slim), so a build
# is repeatable and a re-pushed tag cannot change it. To move to a newer base, see docs/deploy.md:
#   docker buildx imagetools inspect python:3.11-slim     (or: crane digest python:3.11-slim)
# `make image` passes PYTHON_IMAGE=localhost/giftcoin-base:bookworm instead: Debian bookworm's own
# Python 3.11, made with debootstrap where no registry serves this base.
ARG PYTHON_IMAGE=python:3.11-slim@sha256:9c900dea9e8fb7e16277c179b555cc72d29a352dbc33cff48ad5a0412fd5bfc7

# ---- build: dependencies into a virtualenv; the contracts' Python code from protos/ ----
FROM ${PYTHON_IMAGE} AS build
# A CA bundle for pip behind a TLS-inspecting proxy (`make image` mounts the host's and names it
# here); unset, pip uses its own.
ARG PIP_CERT
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /build

# Every package is pinned (transitive ones too); --no-deps + pip check make a missing pin fail
# the build instead of letting pip pick a version.
COPY docker/requirements-runtime.txt docker/requirements-protoc.txt ./
RUN python -m venv /opt/giftcoin \
 && /opt/giftcoin/bin/pip install --only-binary=:all: --no-deps -r requirements-runtime.txt \
 && /opt/giftcoin/bin/pip check
RUN python -m venv /opt/protoc \
 && /opt/protoc/bin/pip install --only-binary=:all: --no-deps -r requirements-protoc.txt \
 && /opt/protoc/bin/pip check

# The same generation as `make gen` (gen/ is never committed, so the image builds its own).
COPY protos/giftcoin protos/giftcoin
RUN mkdir gen \
 && /opt/protoc/bin/python -m grpc_tools.protoc -Iprotos --python_out=gen --grpc_python_out=gen \
      $(find protos/giftcoin -name '*.proto' | sort)

COPY services services
# Byte-code compiled now: at run time the root filesystem is read-only (and
# PYTHONDONTWRITEBYTECODE=1), and hash-checked .pyc files stay valid whatever the copy's mtimes.
RUN /opt/giftcoin/bin/python -m compileall -q --invalidation-mode unchecked-hash gen services

# ---- runtime: the virtualenv, the generated contracts and the services; nothing else ----
FROM ${PYTHON_IMAGE} AS runtime
LABEL org.opencontainers.image.title="giftcoin" \
      org.opencontainers.image.description="giftcoin wallet, gifting and payout gRPC services"

# A fixed numeric user (deploy/ sets runAsUser to the same id); no home, no shell.
RUN groupadd --system --gid 10001 giftcoin \
 && useradd --system --uid 10001 --gid 10001 --no-create-home --home-dir /nonexistent \
      --shell /usr/sbin/nologin giftcoin

ENV PATH=/opt/giftcoin/bin:$PATH \
    PYTHONPATH=/app:/app/gen \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    TMPDIR=/tmp
WORKDIR /app
COPY --from=build /opt/giftcoin /opt/giftcoin
COPY --from=build /build/gen /app/gen
COPY --from=build /build/services /app/services

USER 10001:10001
# gRPC: wallet 50051, gifting 50052, payout 50053; plaintext health checks (GIFTCOIN_HEALTH_PORT) 8081;
# Prometheus metrics (GIFTCOIN_METRICS_PORT) 9464.
EXPOSE 50051 50052 50053 8081 9464
CMD ["python", "-m", "services.wallet", "serve"]
