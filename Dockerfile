# syntax=docker/dockerfile:1
FROM python:3.11-slim AS build
WORKDIR /src
COPY pyproject.toml README.md ./
COPY cacheproxy ./cacheproxy
RUN pip wheel --no-cache-dir --wheel-dir /wheels .

FROM python:3.11-slim
RUN useradd --system --uid 10001 --home-dir /var/cache/cacheproxy cacheproxy \
 && mkdir -p /var/cache/cacheproxy && chown cacheproxy /var/cache/cacheproxy
COPY --from=build /wheels /wheels
RUN pip install --no-cache-dir /wheels/*.whl && rm -rf /wheels
USER cacheproxy
ENV CACHEPROXY_CACHE_DIR=/var/cache/cacheproxy \
    CACHEPROXY_LISTEN=0.0.0.0:5000
VOLUME /var/cache/cacheproxy
EXPOSE 5000
HEALTHCHECK --interval=30s --timeout=3s \
  CMD python -c "import urllib.request,sys; urllib.request.urlopen('http://127.0.0.1:5000/v2/', timeout=2)" || exit 1
ENTRYPOINT ["cacheproxy"]
CMD ["serve"]
