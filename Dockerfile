# syntax=docker/dockerfile:1
# cacheproxy: docker build -t cacheproxy:0.1.0 .
#   docker run -p 5000:5000 -v cacheproxy-cache:/var/cache/cacheproxy cacheproxy:0.1.0
# Config: environment variables (CACHEPROXY_<SETTING>) or a mounted TOML file named by
# CACHEPROXY_CONFIG, e.g.
#   -v ./cacheproxy.toml:/etc/cacheproxy/config.toml:ro -e CACHEPROXY_CONFIG=/etc/cacheproxy/config.toml
# (name the file by CACHEPROXY_CONFIG rather than --config, so the HEALTHCHECK reads it too).

# A tag naming an exact Python release, the one the test suite runs on. A tag is not
# an image: it is re-pushed (Debian updates, security rebuilds). The release pipeline
# passes the digest (--build-arg PYTHON=python:3.11.7-slim-bookworm@sha256:...),
# resolved where it has the registry at hand: a digest cannot be moved.
ARG PYTHON=python:3.11.7-slim-bookworm

# Build: a virtualenv with cacheproxy and its dependencies, copied whole into the
# runtime stage, so no wheel, pip cache or compiler reaches the image.
FROM ${PYTHON} AS build
# PIP_CONSTRAINT reaches the isolated environment pip builds cacheproxy in, so the
# build backend is pinned too.
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1 PIP_CONSTRAINT=/src/constraints.txt
RUN python -m venv /opt/cacheproxy
WORKDIR /src
# Dependencies first, every one pinned (constraints.txt: the versions the tests run
# with), installed as listed without resolving anything (--no-deps: no newer release
# slips in); pip check fails the build if the set is incomplete or inconsistent.
# This layer is rebuilt only when constraints.txt changes.
COPY constraints.txt ./
RUN /opt/cacheproxy/bin/pip install --no-deps --requirement constraints.txt \
 && /opt/cacheproxy/bin/pip check
COPY pyproject.toml README.md ./
COPY cacheproxy ./cacheproxy
# cacheproxy itself, resolving nothing either: pip check then fails the build if
# pyproject.toml asks for a package, or a version, constraints.txt does not hold.
RUN /opt/cacheproxy/bin/pip install --no-deps . \
 && /opt/cacheproxy/bin/pip check \
 && /opt/cacheproxy/bin/python -c "import cacheproxy.app, cacheproxy.savings.prices"

FROM ${PYTHON}
LABEL org.opencontainers.image.title="cacheproxy" \
      org.opencontainers.image.description="Pull-through caching proxy for container registries" \
      org.opencontainers.image.licenses="Apache-2.0"
# A numeric, non-root user: Kubernetes' runAsNonRoot can only verify a numeric USER.
RUN groupadd --system --gid 10001 cacheproxy \
 && useradd --system --uid 10001 --gid 10001 --no-create-home \
      --home-dir /var/cache/cacheproxy --shell /usr/sbin/nologin cacheproxy \
 && mkdir -p /var/cache/cacheproxy /etc/cacheproxy \
 && chown 10001:10001 /var/cache/cacheproxy
COPY --from=build /opt/cacheproxy /opt/cacheproxy
# The default cache_dir is $XDG_CACHE_HOME/cacheproxy, the volume below. Set here as a
# built-in default, not as CACHEPROXY_CACHE_DIR / CACHEPROXY_LISTEN: those would
# outrank a mounted config file's cache_dir and listen (env beats file).
ENV PATH=/opt/cacheproxy/bin:$PATH \
    XDG_CACHE_HOME=/var/cache \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1
USER 10001:10001
VOLUME ["/var/cache/cacheproxy"]
# The default listen, 0.0.0.0:5000.
EXPOSE 5000
# /healthz on the port the config names; exits 1 with the reason when it fails.
HEALTHCHECK --interval=30s --timeout=5s --start-period=30s --retries=3 \
  CMD ["python", "-m", "cacheproxy.commands.healthcheck"]
# SIGTERM: stop accepting, let transfers in flight finish (up to 30 s), flush, exit.
STOPSIGNAL SIGTERM
ENTRYPOINT ["cacheproxy"]
CMD ["serve"]
