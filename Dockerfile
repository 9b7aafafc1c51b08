# syntax=docker/dockerfile:1
#
# The imagewarden image: the checker service (`imagewarden serve`), the pre-pull controller
# (`imagewarden prepull run`), the node agent, and the static no-op binary that pre-pull init
# containers copy and run (images without a shell pre-pull too).
#
#   podman build -t imagewarden:dev .        (or docker build)
#
# Stage "build" makes the wheels (imagewarden and its dependencies) and the static no-op binary;
# the final stage installs the wheels into a virtualenv and runs as an unprivileged user, with
# no compiler and no pip cache. Works on the official python slim image and on any Debian base
# with python3-venv (PYTHON_IMAGE build argument).
ARG PYTHON_IMAGE=docker.io/library/python:3.11-slim-bookworm

FROM ${PYTHON_IMAGE} AS build
RUN apt-get update \
 && apt-get install -y --no-install-recommends gcc libc6-dev \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
# The no-op first: it changes rarely, so this layer stays cached across code changes.
COPY docker/noop.c docker/noop.c
RUN gcc -static -Os -s -o /noop docker/noop.c \
 && chmod 0755 /noop \
 && /noop
COPY pyproject.toml README.md ./
COPY imagewarden imagewarden
RUN python3 -m venv /opt/build-venv \
 && /opt/build-venv/bin/pip wheel --no-cache-dir --wheel-dir /wheels .

FROM ${PYTHON_IMAGE}
# A dedicated numeric user: Kubernetes' runAsNonRoot can verify a numeric USER, and the Helm
# chart's securityContext.runAsUser defaults to the same uid.
ARG IMAGEWARDEN_UID=10001
RUN groupadd --system --gid "${IMAGEWARDEN_UID}" imagewarden \
 && useradd --system --uid "${IMAGEWARDEN_UID}" --gid imagewarden --no-create-home \
      --home-dir /nonexistent --shell /usr/sbin/nologin imagewarden
RUN --mount=type=bind,from=build,source=/wheels,target=/wheels \
    python3 -m venv /opt/imagewarden \
 && /opt/imagewarden/bin/pip install --no-cache-dir --no-index --find-links /wheels imagewarden \
 && /opt/imagewarden/bin/pip uninstall -y pip
# imagewarden.prepull.render.NOOP_BINARY_PATH; tests/test_dockerfile.py checks they agree.
COPY --from=build /noop /usr/local/libexec/imagewarden/noop
ENV PATH=/opt/imagewarden/bin:${PATH} \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1
USER ${IMAGEWARDEN_UID}:${IMAGEWARDEN_UID}
ENTRYPOINT ["imagewarden"]
CMD ["--help"]
