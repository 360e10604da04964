#!/usr/bin/env bash
# What the tests need outside Python, made ready on a fresh machine (called by `make test`):
#   - PostgreSQL on 127.0.0.1:5432 (the review ledger's tests run on it as well as on SQLite);
#   - Debian's Chromium (the review page's browser test drives it through Playwright).
set -euo pipefail

PG_HOST=127.0.0.1
PG_PORT=5432

as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo -n "$@"; fi; }

if ! pg_isready -q -h "$PG_HOST" -p "$PG_PORT" 2>/dev/null; then
  echo "test-services: PostgreSQL is not accepting connections on $PG_HOST:$PG_PORT; starting it" >&2
  if command -v pg_ctlcluster >/dev/null && [ -d /etc/postgresql ]; then
    for version in /etc/postgresql/*; do
      as_root pg_ctlcluster --skip-systemctl-redirect "$(basename "$version")" main start || true
    done
  fi
  for _ in $(seq 1 30); do
    pg_isready -q -h "$PG_HOST" -p "$PG_PORT" && break
    sleep 1
  done
fi
if ! pg_isready -q -h "$PG_HOST" -p "$PG_PORT"; then
  echo "test-services: PostgreSQL is not running on $PG_HOST:$PG_PORT and could not be started" >&2
  exit 1
fi

if [ ! -x /usr/bin/chromium ]; then
  echo "test-services: installing Debian's chromium for the browser test" >&2
  export DEBIAN_FRONTEND=noninteractive
  as_root apt-get install -y -q chromium chromium-driver >/dev/null \
    || { as_root apt-get update -q >/dev/null && as_root apt-get install -y -q chromium chromium-driver >/dev/null; }
fi
echo "test-services: PostgreSQL on $PG_HOST:$PG_PORT, $(/usr/bin/chromium --version 2>/dev/null)" >&2
