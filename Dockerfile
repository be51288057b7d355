# imagine-bot: one process serving Discord and/or Slack, the HTTP server (health, metrics,
# vendor webhooks, Slack events, media links) and the engine. SQLite lives on the /data volume;
# several replicas (docker-compose.scale.yml) share PostgreSQL and a volume at /media (MEDIA_ROOT).
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    DATA_DIR=/data \
    HTTP_HOST=0.0.0.0 \
    HTTP_PORT=8080

WORKDIR /app
COPY pyproject.toml README.md ./
COPY bot ./bot
COPY adapters ./adapters
COPY providers ./providers
RUN pip install --no-cache-dir . \
    && useradd --system --uid 10001 --home-dir /data imagine \
    && mkdir -p /data /media && chown imagine /data /media

USER imagine
VOLUME ["/data"]
EXPOSE 8080
HEALTHCHECK --interval=30s --timeout=5s --start-period=60s --retries=3 \
    CMD python -c "import urllib.request,sys; sys.exit(0 if urllib.request.urlopen('http://127.0.0.1:8080/readyz', timeout=4).status == 200 else 1)"
ENTRYPOINT ["imagine-bot"]
CMD ["run"]
