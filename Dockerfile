FROM python:3.11-slim
WORKDIR /app
COPY pyproject.toml README.md alembic.ini ./
COPY worker ./worker
COPY migrations ./migrations
RUN pip install --no-cache-dir -e . \
    && useradd --create-home --uid 1000 zoomworker
USER zoomworker
CMD ["celery", "-A", "worker", "worker", "--loglevel", "INFO"]
