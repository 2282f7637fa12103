#!/usr/bin/env bash
# Harbor (Python >= 3.12) in an image of its own, built here without a registry: Debian 13 by
# debootstrap (Python 3.13, the Docker command line and compose), then Harbor from PyPI in a venv.
# tools/harbor runs it with the host's Docker socket, driving the host's engine.
#     bash tools/harbor_image.sh [HARBOR_VERSION]     (default 0.26.*; does nothing when built)
set -euo pipefail
version=${1:-0.26.*}
base=abliterate-harbor-base:trixie
image=abliterate-harbor:${version//\*/x}

if ! docker image inspect "$base" >/dev/null 2>&1; then
    command -v debootstrap >/dev/null || apt-get install -y debootstrap
    root=$(mktemp -d)
    debootstrap --variant=minbase --include=python3,python3-venv,docker-cli,docker-compose,ca-certificates,git \
        trixie "$root" >/dev/null
    tar -C "$root" -c . | docker import - "$base" >/dev/null
    rm -rf "$root"
fi
if ! docker image inspect "$image" >/dev/null 2>&1; then
    # PyPI is reached through the host's network and certificate authority (see FIELD_NOTES).
    name=abliterate-harbor-build-$$
    trap 'docker rm -f "$name" >/dev/null 2>&1 || true' EXIT  # a failed install leaves no container
    docker run --name "$name" --network host -v /etc/ssl/certs:/etc/ssl/certs:ro "$base" \
        bash -c "python3 -m venv /opt/harbor && /opt/harbor/bin/pip install -q 'harbor==$version'"
    docker commit --change 'ENV PATH=/opt/harbor/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' "$name" "$image" >/dev/null
fi
docker run --rm "$image" harbor --version
