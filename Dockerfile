# tailhook's image (README: "The image"). A venv is built from the source on Debian 12
# and copied onto distroless's Debian 12 Python 3.11: no shell, no package manager, no
# pip, setuptools or compiler. It runs as uid 10001 with a read-only root file system;
# the only place it writes is its state volume, /var/lib/tailhook.
#
#   docker build -t tailhook:0.1.0 .
#   docker run --read-only -v tailhook-state:/var/lib/tailhook \
#     -v "$PWD/config.yaml:/etc/tailhook/config.yaml:ro" -p 9717:9717 tailhook:0.1.0
#
# with `state_dir: /var/lib/tailhook/state` in the config (tailhook creates it 0700).

FROM debian:12-slim AS build
RUN apt-get update \
    && apt-get install --yes --no-install-recommends python3-venv=3.11.2-1+b1 \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY pyproject.toml README.md ./
COPY agent ./agent
COPY schemas ./schemas
# pip and setuptools build the venv and leave it: nothing at run time needs them. The
# state volume's mount point is made here (0700), since the final stage has no shell.
RUN python3 -m venv /opt/tailhook \
    && /opt/tailhook/bin/pip install --no-cache-dir --disable-pip-version-check . \
    && /opt/tailhook/bin/pip uninstall --yes --disable-pip-version-check pip setuptools \
    && rm /opt/tailhook/bin/activate* \
    && install -d -m 0700 /var/lib/tailhook

FROM gcr.io/distroless/python3-debian12:nonroot
# The version is agent.__version__ (tests/test_image.py holds them equal).
LABEL org.opencontainers.image.title="tailhook" \
      org.opencontainers.image.description="Tails WAF detection logs and delivers them to webhooks in Wallarm's notification format, at least once." \
      org.opencontainers.image.version="0.1.0" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.base.name="gcr.io/distroless/python3-debian12:nonroot"
COPY --from=build /opt/tailhook /opt/tailhook
COPY --from=build --chown=10001:10001 /var/lib/tailhook /var/lib/tailhook
# PYTHONDONTWRITEBYTECODE: the root file system is read-only (pip compiled the venv's
# bytecode at build time). TAILHOOK_METRICS_LISTEN: probes and scrapes come from outside
# the container, so listen on every address whatever the config's metrics.listen says.
ENV PATH=/opt/tailhook/bin:/usr/bin:/bin \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    TAILHOOK_CONFIG=/etc/tailhook/config.yaml \
    TAILHOOK_METRICS_LISTEN=0.0.0.0:9717
USER 10001:10001
VOLUME ["/var/lib/tailhook"]
EXPOSE 9717
STOPSIGNAL SIGTERM
ENTRYPOINT ["/opt/tailhook/bin/tailhook"]
CMD ["run"]
