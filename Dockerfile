# tailhook as a sidecar: share the WAF's log volume, mount the config, scrape :9717.
FROM python:3.11-slim AS build
WORKDIR /src
COPY pyproject.toml README.md ./
COPY agent ./agent
COPY schemas ./schemas
RUN pip wheel --no-cache-dir --wheel-dir /wheels .

FROM python:3.11-slim
RUN useradd --system --uid 10001 --home-dir /var/lib/tailhook tailhook \
    && mkdir -p /var/lib/tailhook && chown tailhook /var/lib/tailhook && chmod 0700 /var/lib/tailhook
COPY --from=build /wheels /wheels
RUN pip install --no-cache-dir /wheels/*.whl && rm -rf /wheels
USER tailhook
ENV TAILHOOK_CONFIG=/etc/tailhook/config.yaml
EXPOSE 9717
ENTRYPOINT ["tailhook"]
CMD ["run"]
