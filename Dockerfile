# jit in a small, non-root image. One image, three uses:
#   jit serve --host 0.0.0.0   (default: Slack endpoint and pipeline hook on port 3000)
#   jit worker                 (grants, revokes, Slack updates, the expiry scheduler)
#   jit bench --quick          (the benchmarks, on this host; they start a Redis of their own)
# Running it: docker-compose.yml and docs/operations.md.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

# redis-server is here for `jit bench` only, which starts a throwaway one of its own; the
# deployment's Redis is a service of its own (docker-compose.yml). Debian's package, at the
# version of the base image's release (pinning it would break the build at every point release).
# hadolint ignore=DL3008
RUN apt-get update \
 && apt-get install -y --no-install-recommends redis-server \
 && rm -rf /var/lib/apt/lists/*

# Build from a copy of the source, install it into site-packages, then drop the copy:
# the image holds the installed package only (.dockerignore keeps tests, .git, .env out).
COPY . /tmp/jit-src
RUN pip install /tmp/jit-src \
 && rm -rf /tmp/jit-src \
 && groupadd --system --gid 10001 jit \
 && useradd --system --uid 10001 --gid 10001 --no-create-home --home-dir /nonexistent --shell /usr/sbin/nologin jit \
 && mkdir -p /etc/jit

WORKDIR /etc/jit
# numeric, so a runtime that must prove the user is not root (Kubernetes runAsNonRoot) can
USER 10001:10001
EXPOSE 3000

# The policy is mounted at /etc/jit/jit-policy.yaml (JIT_POLICY_FILE's default is relative to here).
CMD ["jit", "serve", "--host", "0.0.0.0", "--port", "3000"]
