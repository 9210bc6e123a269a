# Multi-stage build: compile in the Rust image, run in a slim Debian with the binary, ONNX Runtime next to it
# (where the binary looks first) and the shipped models.
#   docker build -t mercator .
#   docker run -p 8000:8000 mercator
FROM rust:1.95-bookworm AS build
RUN apt-get update \
 && apt-get install -y --no-install-recommends python3 python3-pip \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY . .
RUN scripts/install-runtime.sh \
 && cargo build --release --locked --bin mercator \
 && cp target/release/mercator .runtime/lib/libonnxruntime.so /tmp/

FROM debian:bookworm-slim
# CA certificates: webhook deliveries over https verify receivers against the system's roots.
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates \
 && rm -rf /var/lib/apt/lists/* \
 && useradd --system --uid 10001 --home-dir /data mercator \
 && mkdir -p /data && chown mercator /data
WORKDIR /app
COPY --from=build /tmp/mercator /tmp/libonnxruntime.so /app/
COPY models /app/models
USER mercator
ENV MERCATOR_ADDR=0.0.0.0:8000 \
    MERCATOR_MODELS_DIR=/app/models \
    MERCATOR_DATA_DIR=/data \
    MERCATOR_LOG_FORMAT=json
EXPOSE 8000
STOPSIGNAL SIGTERM
ENTRYPOINT ["/app/mercator"]
CMD ["serve"]
