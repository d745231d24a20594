# A render worker: the worker binary, the libtorch of the pinned PyTorch
# wheel (torch 2.11.0, which tch 0.24.0 links), ffmpeg for MP4 output, the
# shipped model with its directions, and MTCNN's weights for alignment.
#
# The CUDA image takes torch from PyPI, whose Linux wheel is the CUDA build
# and brings NVIDIA's runtime libraries as wheels of their own (the host
# needs only the driver and the NVIDIA container toolkit). The CPU image
# takes the CPU-only wheel, a fraction of the size:
#
#   docker build -f deploy/docker/worker.Dockerfile -t glowline/worker:cuda .
#   docker build -f deploy/docker/worker.Dockerfile -t glowline/worker:cpu \
#       --build-arg TORCH_INDEX=https://download.pytorch.org/whl/cpu .

ARG TORCH_VERSION=2.11.0
ARG TORCH_INDEX=https://pypi.org/simple
# facenet-pytorch's wheel carries MTCNN's weights; they are converted to
# safetensors at build time (scripts/convert_mtcnn.py), as setup.sh does.
ARG FACENET_PYTORCH_VERSION=2.6.0

FROM rust:1-bookworm AS build
ARG TORCH_VERSION
ARG TORCH_INDEX
ARG FACENET_PYTORCH_VERSION
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3-venv \
    && rm -rf /var/lib/apt/lists/*
# The venv lives at the same path in the final image, so the rpath that
# the build embeds (torch's lib folder) resolves there too.
RUN python3 -m venv /opt/torch \
    && /opt/torch/bin/pip install --no-cache-dir --index-url "$TORCH_INDEX" \
        "torch==$TORCH_VERSION" \
    && /opt/torch/bin/pip install --no-cache-dir --no-deps \
        "facenet-pytorch==$FACENET_PYTORCH_VERSION"
ENV PATH=/opt/torch/bin:$PATH \
    LIBTORCH_USE_PYTORCH=1
# The same folder as in the final image: the build also records where the
# face detector's weights live (models/ beside the sources).
WORKDIR /opt/glowline
COPY . .
RUN python scripts/convert_mtcnn.py models/mtcnn.safetensors \
    && cargo build --release --locked -p worker \
    && cp target/release/worker /usr/local/bin/worker

FROM debian:bookworm-slim
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates curl ffmpeg \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --system --uid 10001 --home-dir /nonexistent --shell /usr/sbin/nologin glowline
# Only the shared libraries are needed at run time: torch's own and, in
# the CUDA build, NVIDIA's wheels beside it, which torch's libraries find
# through their rpaths.
COPY --from=build /opt/torch/lib/python3.11/site-packages /opt/torch/lib/python3.11/site-packages
COPY --from=build /usr/local/bin/worker /usr/local/bin/worker
WORKDIR /opt/glowline
COPY --from=build /opt/glowline/models ./models
COPY configs/worker.toml /etc/glowline/worker.toml
RUN mkdir -p /tmp/glowline-worker && chown 10001 /tmp/glowline-worker
USER 10001
ENV GLOWLINE_WORKER_CONFIG=/etc/glowline/worker.toml \
    GLOWLINE_WORKER__HTTP__LISTEN=0.0.0.0:8081
EXPOSE 8081
HEALTHCHECK --interval=10s --timeout=3s --start-period=60s \
    CMD ["curl", "-fsS", "-o", "/dev/null", "http://127.0.0.1:8081/readyz"]
ENTRYPOINT ["/usr/local/bin/worker"]
