#!/usr/bin/env bash
# The system programs the test suite runs for real: redis-server and redis-cli (the Redis stores, the
# Redis Cluster store, the stream consumer) and chromium (the page's browser test). Called by
# `make test` (and so by .ci/run) before any test runs.
#
# Missing ones are installed with apt-get when this runs as root on a Debian/Ubuntu machine (CI);
# otherwise the script exits 1 with the one command that installs them, so `make test` never passes
# having silently skipped the service suites.
set -euo pipefail

missing=()
command -v redis-server >/dev/null 2>&1 && command -v redis-cli >/dev/null 2>&1 || missing+=(redis-server)
command -v chromium >/dev/null 2>&1 || missing+=(chromium)
[ ${#missing[@]} -eq 0 ] && exit 0

if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
  echo "installing ${missing[*]} (apt-get) for the Redis and browser tests"
  apt-get update -qq || true
  if DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null; then
    exit 0
  fi
  echo "error: apt-get could not install ${missing[*]}" >&2
  exit 1
fi

if command -v apt-get >/dev/null 2>&1; then
  fix="sudo apt-get install -y ${missing[*]}"
else
  fix="install them with this system's package manager (redis-server and redis-cli, and a browser binary named chromium on PATH)"
fi
echo "error: the Redis and browser tests need ${missing[*]} (not installed here); run:" >&2
echo "  $fix" >&2
echo "then run make test again." >&2
exit 1
