# One image for every hftgate service; docker-compose.yml picks the module to run.
FROM python:3.11-slim-bookworm
RUN apt-get update && apt-get install -y --no-install-recommends gcc libc6-dev make && rm -rf /var/lib/apt/lists/*
WORKDIR /app
COPY . .
RUN pip install --no-cache-dir . && useradd --create-home hftgate && mkdir -p /data && chown hftgate /data
USER hftgate
ENV HFTGATE_STATE_DIR=/data
# Overridden per service in docker-compose.yml.
CMD ["python", "-m", "services.cache"]
