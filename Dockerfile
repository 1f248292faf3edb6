# Mitosis: one image for the planner, executor and gateway (Envoy) roles.
#
#   docker build -t mitosis .
#   docker run mitosis planner | executor | gateway [ARGS] | health [HOST:PORT] | mitosis ...
#
# deploy/compose.yaml and deploy/kubernetes/ run it; docs/DEPLOYING.md says how.
# BASE and NODE_BASE can be swapped for a local image where no registry is reachable
# (a Debian bookworm with python3 3.11 works as BASE: docs/DEPLOYING.md, "Containers").
ARG BASE=python:3.11-slim
ARG NODE_BASE=node:20-slim

# The browser UI, built by Vite; only its dist/ folder ships.
FROM ${NODE_BASE} AS web
WORKDIR /src/clients/web
COPY clients/web/package.json clients/web/package-lock.json ./
RUN npm ci --no-audit --no-fund --loglevel=error
COPY clients/web/ ./
RUN npm run --silent build

# The Python packages, exactly as locked in uv.lock, with the uv the Makefile pins.
FROM ${BASE} AS python
ARG UV_VERSION=0.13.9
RUN python3 -m pip install --quiet --no-cache-dir --disable-pip-version-check \
        --root-user-action=ignore --target /opt/uv "uv==${UV_VERSION}"
ENV UV_PROJECT_ENVIRONMENT=/app/.venv \
    UV_PYTHON_DOWNLOADS=never \
    UV_COMPILE_BYTECODE=1 \
    UV_LINK_MODE=copy \
    UV_NO_CACHE=1
WORKDIR /src
# Dependencies first, so a change of our code does not reinstall them.
COPY pyproject.toml uv.lock ./
RUN /opt/uv/bin/uv sync --locked --no-install-project --extra gateway --python python3
COPY README.md ./
COPY services/ services/
COPY clients/mitosis/ clients/mitosis/
# The wheel carries Envoy's template (mitosis.gateway finds it beside its code).
COPY envoy/envoy.yaml envoy/envoy.yaml
# Installed as a package, not an editable checkout: the UI is found through
# MITOSIS_GATEWAY_STATIC_DIR below.
RUN /opt/uv/bin/uv sync --locked --extra gateway --no-editable --python python3

FROM ${BASE}
RUN groupadd --system --gid 10001 mitosis \
    && useradd --system --uid 10001 --gid 10001 --no-create-home --home-dir /nonexistent \
        --shell /usr/sbin/nologin mitosis \
    && mkdir -p /data && chown mitosis:mitosis /data
COPY --from=python /app/.venv /app/.venv
COPY --from=web /src/clients/web/dist /app/web
COPY deploy/entrypoint.py /app/entrypoint.py
ENV PATH=/app/.venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    GRPC_VERBOSITY=ERROR \
    MITOSIS_GATEWAY_STATIC_DIR=/app/web \
    MITOSIS_DATA_DIR=/data \
    MITOSIS_PLANNER_LISTEN=0.0.0.0:50052 \
    MITOSIS_EXECUTOR_LISTEN=0.0.0.0:50051 \
    MITOSIS_GATEWAY_LISTEN=0.0.0.0:8080
USER 10001:10001
WORKDIR /data
# 8080 gateway (UI, gRPC-Web, gRPC); 50051 executor, 50052 planner (gRPC);
# 9464 and 9463 their metrics when MITOSIS_METRICS_LISTEN asks for them.
EXPOSE 8080 50051 50052 9464 9463
# grpc.health.v1 of the executor, the default role; compose gives each role its own.
HEALTHCHECK --interval=10s --timeout=5s --start-period=20s --retries=3 \
    CMD ["python", "/app/entrypoint.py", "health", "127.0.0.1:50051"]
ENTRYPOINT ["python", "/app/entrypoint.py"]
CMD ["executor"]
