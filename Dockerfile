# The stream-app package, installed the way the README installs it (without the
# embedded broker: in a deployment the app talks to Apache Kafka).
FROM python:3.11-slim
WORKDIR /app
COPY pyproject.toml README.md ./
COPY stream_app ./stream_app
COPY schemas ./schemas
RUN pip install --no-cache-dir '.[rocksdb]'
ENV DATA_DIR=/var/lib/stream-app \
    TABLE_STORE=rocksdb:// \
    WEB_BIND=0.0.0.0
EXPOSE 6066
ENTRYPOINT ["stream-app"]
CMD ["worker"]
