# The service image used by compose.yaml.
FROM python:3.11.11-slim-bookworm
RUN pip install --no-cache-dir uv==0.13.9
WORKDIR /app
COPY pyproject.toml uv.lock README.md ./
COPY src ./src
RUN uv sync --frozen --no-dev
ENV PATH="/app/.venv/bin:$PATH"
EXPOSE 8000
CMD ["sh", "-c", "skill-credits migrate && skill-credits serve --host 0.0.0.0 --port 8000 --workers ${WORKERS:-2}"]
