# jit in a small, non-root image. One image, two roles:
#   jit serve --host 0.0.0.0   (default: Slack endpoint, pipeline hook, /metrics on port 3000)
#   jit worker                 (grants, revokes, Slack updates, the expiry scheduler)
# See docker-compose.yml and docs/operations.md.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

# Build from a copy of the source, install it into site-packages, then drop the copy:
# the image holds the installed package only (.dockerignore keeps tests, .git, .env out).
COPY . /tmp/jit-src
RUN pip install /tmp/jit-src \
 && rm -rf /tmp/jit-src \
 && useradd --system --uid 10001 --no-create-home --home-dir /nonexistent --shell /usr/sbin/nologin jit \
 && mkdir -p /etc/jit

WORKDIR /etc/jit
USER jit
EXPOSE 3000

# The policy is mounted at /etc/jit/jit-policy.yaml (JIT_POLICY_FILE's default is relative to here).
CMD ["jit", "serve", "--host", "0.0.0.0", "--port", "3000"]
