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
CMD ["woosync", "--help"]
