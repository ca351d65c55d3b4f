# One image for every hftgate service; docker-compose.yml and deploy/kubernetes pick the module to run.
FROM python:3.11-slim-bookworm
RUN apt-get update && apt-get install -y --no-install-recommends gcc libc6-dev make && rm -rf /var/lib/apt/lists/*
WORKDIR /app
COPY . .
RUN pip install --no-cache-dir . && useradd --create-home hftgate && mkdir -p /data && chown hftgate /data \
    && chmod 0755 /app/deploy/docker/entrypoint.sh
USER hftgate
ENV HFTGATE_STATE_DIR=/data
# Any container of this image is production unless told otherwise: no demo accounts with published
# keys, and the suite secret must be provided (HFTGATE_SUITE_SECRET_FILE or HFTGATE_SUITE_SECRET).
ENV HFTGATE_PROFILE=production
# Puts the passwords of REDIS_PASSWORD_FILE / DATABASE_PASSWORD_FILE into the connection URLs.
ENTRYPOINT ["/app/deploy/docker/entrypoint.sh"]
# Overridden per service in docker-compose.yml.
CMD ["python", "-m", "services.cache"]
