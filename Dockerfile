# The image of docker-compose.yml's dashboard and worker services.
# torch first, pinned as in the Makefile: PyPI's Linux x86_64 wheel of torch is the CUDA build
# and brings its CUDA libraries; the host needs the NVIDIA driver and the NVIDIA Container
# Toolkit for the GPU reservation. Then this package with its pinned Optuna 5.
FROM python:3.11-slim
ENV PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
ARG TORCH_VERSION=2.13.0
RUN pip install "torch==${TORCH_VERSION}"
WORKDIR /app
COPY pyproject.toml README.md ./
COPY search ./search
COPY objectives ./objectives
COPY storage ./storage
COPY spaces ./spaces
RUN pip install ".[minilm]"
RUN useradd --create-home search
USER search
# Installed into site-packages, the package finds the specs here.
ENV SEARCH_SPACES_DIR=/app/spaces TZ=UTC
CMD ["search", "--help"]
