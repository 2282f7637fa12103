# GPU image for workers and the dashboard: a CUDA build of torch, then the project.
FROM pytorch/pytorch:2.9.0-cuda12.8-cudnn9-runtime
WORKDIR /app
COPY pyproject.toml README.md prompt-sets.txt ./
COPY abliterate abliterate
COPY ablation ablation
COPY objectives objectives
COPY search search
COPY storage storage
RUN pip install --no-cache-dir . && pip install --no-cache-dir --no-deps -r prompt-sets.txt
ENTRYPOINT []
