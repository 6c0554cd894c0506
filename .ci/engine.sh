#!/usr/bin/env bash
# A private Docker engine for CI and for developers' container tests (run as root).
#
#   bash .ci/engine.sh start    # install docker.io + mmdebstrap if missing, start dockerd, build the base image
#   eval "$(bash .ci/engine.sh env)"   # DOCKER_HOST / DOCKER_CONFIG for this shell
#   bash .ci/engine.sh stop
#
# No registry is reachable on the CI machines, so the Dockerfile's base tag is built locally
# from the Debian mirror with mmdebstrap. The engine keeps its data-root under
# SEGPIPE_CI_WORK (default /tmp/segpipe-ci), so a second run reuses the base image and the
# build cache. `.ci/run` sources this file.

SEGPIPE_CI_WORK=${SEGPIPE_CI_WORK:-/tmp/segpipe-ci}
BASE_IMAGE=${BASE_IMAGE:-python:3.11-slim-bookworm}   # = the Dockerfile's default BASE_IMAGE
ENGINE_SOCK="$SEGPIPE_CI_WORK/docker.sock"
ENGINE_PIDFILE="$SEGPIPE_CI_WORK/dockerd.pid"
ENGINE_LOG="$SEGPIPE_CI_WORK/dockerd.log"
export DOCKER_HOST="unix://$ENGINE_SOCK"
export DOCKER_CONFIG="$SEGPIPE_CI_WORK/docker-config"
ENGINE_STARTED_HERE=0

engine_install_packages() {
    local missing=()
    command -v dockerd >/dev/null || missing+=(docker.io)
    command -v mmdebstrap >/dev/null || missing+=(mmdebstrap)
    if ((${#missing[@]} == 0)); then
        echo "docker.io and mmdebstrap already installed"
        return 0
    fi
    echo "installing ${missing[*]} from the Debian mirror"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
}

engine_up() {
    docker version --format '{{.Server.Version}}' >/dev/null 2>&1
}

engine_start() {
    mkdir -p "$SEGPIPE_CI_WORK" "$DOCKER_CONFIG"
    if engine_up; then
        echo "reusing the engine already answering on $DOCKER_HOST"
        return 0
    fi
    dockerd --data-root "$SEGPIPE_CI_WORK/data" --exec-root "$SEGPIPE_CI_WORK/exec" \
        --pidfile "$ENGINE_PIDFILE" -H "$DOCKER_HOST" >"$ENGINE_LOG" 2>&1 &
    # shellcheck disable=SC2034  # read by .ci/run's exit trap
    ENGINE_STARTED_HERE=1
    local _
    for _ in $(seq 120); do
        engine_up && break
        sleep 0.5
    done
    if ! engine_up; then
        echo "dockerd did not answer on $DOCKER_HOST within 60 s; its log:" >&2
        tail -n 30 "$ENGINE_LOG" >&2
        return 1
    fi
    docker info --format 'engine {{.ServerVersion}}, storage {{.Driver}}, cgroup v{{.CgroupVersion}}, data-root {{.DockerRootDir}}'
}

engine_stop() {
    local pid
    [ -f "$ENGINE_PIDFILE" ] || return 0
    pid=$(cat "$ENGINE_PIDFILE" 2>/dev/null) || return 0
    [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null || return 0
    kill -TERM "$pid"
    local _
    for _ in $(seq 60); do
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.5
    done
    if kill -0 "$pid" 2>/dev/null; then
        echo "dockerd $pid still running after 30 s; sending KILL" >&2
        kill -KILL "$pid" 2>/dev/null || true
    fi
    echo "dockerd stopped"
}

# The local stand-in for python:3.11-slim-bookworm: Debian bookworm with Python 3.11, venv
# and useradd. The two customize hooks copy the machine's CA certificates into the image,
# which pip needs behind the CI machines' TLS-intercepting proxy (harmless elsewhere).
engine_base_image() {
    if docker image inspect "$BASE_IMAGE" >/dev/null 2>&1; then
        echo "base image $BASE_IMAGE present"
        return 0
    fi
    local sources=/etc/apt/sources.list.d/debian.sources
    [ -f "$sources" ] || sources=/etc/apt/sources.list
    echo "building $BASE_IMAGE with mmdebstrap from $sources"
    rm -f "$SEGPIPE_CI_WORK/base.tar"
    # shellcheck disable=SC2016  # $1 is expanded by mmdebstrap's hook shell
    mmdebstrap --quiet --variant=minbase --include=ca-certificates,python3,python3-venv,passwd \
        --customize-hook='cp /usr/local/share/ca-certificates/*.crt "$1/usr/local/share/ca-certificates/" 2>/dev/null || true' \
        --customize-hook='chroot "$1" update-ca-certificates' \
        bookworm "$SEGPIPE_CI_WORK/base.tar" "$sources"
    docker import -c 'CMD ["python3"]' \
        -c 'ENV LANG=C.UTF-8 PIP_CERT=/etc/ssl/certs/ca-certificates.crt SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt REQUESTS_CA_BUNDLE=/etc/ssl/certs/ca-certificates.crt' \
        "$SEGPIPE_CI_WORK/base.tar" "$BASE_IMAGE" >/dev/null
    rm -f "$SEGPIPE_CI_WORK/base.tar"
    docker image inspect -f "base image $BASE_IMAGE: {{.Size}} bytes" "$BASE_IMAGE"
}

if [[ "${BASH_SOURCE[0]}" == "$0" ]]; then
    set -euo pipefail
    case "${1:-}" in
        start) engine_install_packages; engine_start; engine_base_image ;;
        stop) engine_stop ;;
        env) printf 'export DOCKER_HOST=%q DOCKER_CONFIG=%q\n' "$DOCKER_HOST" "$DOCKER_CONFIG" ;;
        *) echo "usage: bash .ci/engine.sh start|stop|env" >&2; exit 2 ;;
    esac
fi
