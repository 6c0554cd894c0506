# segpipe image: the `segpipe` CLI and its runtime dependencies in /opt/venv, run as uid 1000.
#
# CPU (what CI builds; no registry needed once the base tag exists locally):
#   pip download --no-deps torch==2.13.0 -d .ci-work/wheels
#   docker build --build-arg TORCH_WHEEL=.ci-work/wheels/torch-2.13.0+cpu-cp311-cp311-manylinux_2_28_x86_64.whl -t segpipe:dev .
# GPU (no TORCH_WHEEL: torch==2.13.0 comes from TORCH_INDEX_URL, or PyPI's CUDA build if that is empty too):
#   docker build --build-arg TORCH_INDEX_URL=https://download.pytorch.org/whl/cu126 -t segpipe:gpu .
# CUDA wheels bring their own CUDA runtime libraries, so the default base serves GPUs too; the
# host needs the NVIDIA driver (new enough for that CUDA) and nvidia-container-toolkit.
#
# BASE_IMAGE must provide python3 (3.11 or 3.12) with the venv module, /bin/bash, getent and
# useradd: python:3.11-slim-bookworm and Debian/Ubuntu images with python3-venv all do (an image
# that already ships torch, e.g. pytorch/pytorch, works but carries torch twice).
# Classic syntax only (no `# syntax` line, no RUN --mount): the legacy builder, dockerd's
# built-in BuildKit and the docker SDK must all build this file without pulling a frontend.
ARG BASE_IMAGE=python:3.11-slim-bookworm

FROM ${BASE_IMAGE} AS build
# Path of a torch wheel inside the build context; empty = install TORCH_SPEC from an index.
ARG TORCH_WHEEL=
ARG TORCH_SPEC=torch==2.13.0
ARG TORCH_INDEX_URL=
SHELL ["/bin/sh", "-eu", "-c"]

# Dependencies first, so that a source change does not reinstall them. The torch wheel is
# copied into this stage only: the final image never carries the 190 MB file itself.
# What never runs in the image goes: the packages' test suites, torch's C++ test binaries,
# protoc and C++ headers (no compiler here to use them): about 270 MB. The .pyc files stay
# (compiled once, in parallel): the root filesystem is read-only at run time and every
# FLARE case is a cold start.
COPY pyproject.toml ${TORCH_WHEEL} /tmp/build/
RUN python3 -m venv /opt/venv; \
    if [ -n "${TORCH_WHEEL}" ]; then torch="/tmp/build/${TORCH_WHEEL##*/}"; else torch="${TORCH_SPEC}"; fi; \
    set --; \
    if [ -n "${TORCH_INDEX_URL}" ]; then set -- --index-url "${TORCH_INDEX_URL}"; fi; \
    /opt/venv/bin/pip install --no-cache-dir --disable-pip-version-check --no-compile "$@" "${torch}"; \
    /opt/venv/bin/python -c 'import re, tomllib; deps = tomllib.load(open("/tmp/build/pyproject.toml", "rb"))["project"]["dependencies"]; print("\n".join(d for d in deps if re.split(r"[\s<>=!~\[;]", d, maxsplit=1)[0].lower() != "torch"))' >/tmp/build/requirements.txt; \
    /opt/venv/bin/pip install --no-cache-dir --disable-pip-version-check --no-compile -r /tmp/build/requirements.txt; \
    site=$(/opt/venv/bin/python -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])'); \
    find "$site" -type d -name tests -prune -exec rm -rf {} +; \
    rm -rf "$site/torch/test" "$site/torch/include"; \
    find "$site/torch/bin" -type f \( -name 'test_*' -o -name '*Test' -o -name 'protoc*' \) -delete; \
    /opt/venv/bin/python -m compileall -qq -j 0 "$site" || true  # like pip: skip files newer Pythons only parse

# The project itself, non-editable, without dev extras. `pip check` fails the build when the
# torch that was installed does not satisfy the project's pin. pip leaves the venv last.
COPY . /tmp/src/
RUN /opt/venv/bin/pip install --no-cache-dir --disable-pip-version-check --no-deps --no-build-isolation /tmp/src; \
    /opt/venv/bin/pip check --disable-pip-version-check; \
    /opt/venv/bin/python -m pip uninstall --yes --quiet --disable-pip-version-check pip; \
    mkdir -p /opt/segpipe /opt/workspace; \
    cp -r /tmp/src/configs /tmp/src/model_weights /opt/segpipe/; \
    install -m 0755 /tmp/src/predict.sh /opt/workspace/predict.sh


FROM ${BASE_IMAGE}
ARG SEGPIPE_UID=1000
ARG SEGPIPE_GID=1000
LABEL org.opencontainers.image.title="segpipe" \
      org.opencontainers.image.description="Challenge-submission pipeline for 3D medical image segmentation" \
      org.opencontainers.image.licenses="Apache-2.0"
# HOME and every cache point at /tmp, so any uid (compose's SEGPIPE_UID, `--user`) works
# with a read-only root filesystem and nothing is written into the image at run time.
ENV PATH=/opt/venv/bin:${PATH} \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    HOME=/tmp \
    XDG_CACHE_HOME=/tmp/.cache \
    MPLCONFIGDIR=/tmp/matplotlib \
    TORCH_HOME=/tmp/torch \
    SEGPIPE_WEIGHTS=/opt/segpipe/model_weights \
    SEGPIPE_CONFIG_DIR=/opt/segpipe/configs \
    SEGPIPE_PROGRESS=0
SHELL ["/bin/sh", "-eu", "-c"]

# (Ubuntu 24.04 based images already have uid/gid 1000, "ubuntu": reuse it.)
RUN if ! getent group "${SEGPIPE_GID}" >/dev/null; then groupadd --gid "${SEGPIPE_GID}" segpipe; fi; \
    if ! getent passwd "${SEGPIPE_UID}" >/dev/null; then \
        useradd --uid "${SEGPIPE_UID}" --gid "${SEGPIPE_GID}" --no-create-home --home-dir /tmp --shell /bin/sh segpipe; \
    fi; \
    mkdir -p /workspace/inputs /workspace/outputs; \
    chown "${SEGPIPE_UID}:${SEGPIPE_GID}" /workspace/outputs
COPY --from=build /opt/venv /opt/venv
COPY --from=build /opt/segpipe /opt/segpipe
COPY --from=build /opt/workspace/predict.sh /workspace/predict.sh

WORKDIR /workspace
USER ${SEGPIPE_UID}:${SEGPIPE_GID}
# Started with no command (grand-challenge, the BraTS 2025 orchestrator): predict /input →
# /output when both are mounted, else print the help. FLARE's `sh predict.sh`, MLCube's
# `infer ...` and `segpipe ...` replace this default.
CMD ["segpipe", "entry"]
