# One image for every woosync service; docker-compose.yml picks the command.
FROM python:3.11-slim
WORKDIR /app
COPY pyproject.toml ./
COPY shared ./shared
COPY services ./services
COPY tools ./tools
COPY woosync ./woosync
COPY migrations ./migrations
RUN pip install --no-cache-dir .  && useradd --system woosync
USER woosync
ENV PYTHONUNBUFFERED=1
# The service's own /healthz on this host (woosync/health.py); docker-compose.yml names the
# service per container. The migrate job and the simulator override or disable it.
HEALTHCHECK --interval=10s --timeout=5s --start-period=30s --retries=3 \
    CMD ["woosync", "health"]
CMD ["woosync", "--help"]
