# The image of the compose services (worker, promoter, dashboard): the project in a virtual
# environment that also sees the base image's packages, so a CUDA base's own torch is the one used.
#   docker build -t abliterate .                                            # GPU: BASE's CUDA torch
#   docker build --build-arg BASE=abliterate-base:bookworm -t abliterate .  # any Debian base with python3
# A host that reaches no package index puts a folder of wheels (torch's included) in the build
# context as wheels/ and adds --build-arg PIP_NO_INDEX=1 --build-arg PIP_FIND_LINKS=/app/wheels.
ARG BASE=pytorch/pytorch:2.9.0-cuda12.8-cudnn9-runtime
FROM ${BASE}
# Debian's python3 makes virtual environments only with python3-venv (from Debian's mirror).
RUN python3 -c "import ensurepip" 2>/dev/null \
    || (apt-get update && apt-get install -y --no-install-recommends python3-venv && rm -rf /var/lib/apt/lists/*)
RUN python3 -m venv --system-site-packages /opt/abliterate
ENV PATH=/opt/abliterate/bin:$PATH
WORKDIR /app
COPY . .
ARG PIP_NO_INDEX
ARG PIP_FIND_LINKS
# torch is no dependency of the project (every machine brings its own build); a base without one
# gets the index's, or the wheel folder's.
RUN (python -c "import torch" 2>/dev/null || pip install --no-cache-dir torch) \
    && pip install --no-cache-dir . && rm -rf wheels
ENTRYPOINT []
