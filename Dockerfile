# The service image used by compose.yaml.
# PYTHON_IMAGE is the base: the official slim image by default; CI, which reaches no image
# registry, passes the one scripts/build-images.sh builds from Debian packages.
ARG PYTHON_IMAGE=python:3.11.11-slim-bookworm
FROM ${PYTHON_IMAGE}
RUN pip install --no-cache-dir uv==0.13.9
ENV UV_PYTHON_DOWNLOADS=never UV_LINK_MODE=copy UV_COMPILE_BYTECODE=1
WORKDIR /app
# The locked dependencies first, in a layer of their own that source edits do not invalidate.
COPY pyproject.toml uv.lock ./
RUN uv sync --frozen --no-dev --no-install-project
# Then the whole project (less .dockerignore), wherever its migrations live.
COPY . .
RUN uv sync --frozen --no-dev
ENV PATH="/app/.venv/bin:$PATH"
EXPOSE 8000
CMD ["sh", "-c", "skill-credits migrate && skill-credits serve --host 0.0.0.0 --port 8000 --workers ${WORKERS:-2}"]
