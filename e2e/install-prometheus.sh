#!/usr/bin/env bash
# Installs a real Prometheus from Debian's packages when none is on PATH (the rollout e2e tests and
# the demo query it). Needs root, as on the project's CI and dev machines.
set -euo pipefail
if command -v prometheus >/dev/null 2>&1; then
  exit 0
fi
if [ "$(id -u)" != 0 ]; then
  echo "prometheus is missing; install it (Debian/Ubuntu: sudo apt-get install prometheus) and retry" >&2
  exit 1
fi
echo "installing prometheus from Debian's packages..."
export DEBIAN_FRONTEND=noninteractive
for attempt in 1 2 3; do
  if apt-get update -qq && apt-get install -y -qq --no-install-recommends prometheus >/dev/null; then
    break
  fi
  echo "apt-get failed (attempt $attempt); retrying in 10s" >&2
  sleep 10
done
command -v prometheus >/dev/null || { echo "could not install prometheus with apt-get" >&2; exit 1; }
# The package may start a system service where an init system runs; the tests start their own.
(service prometheus stop >/dev/null 2>&1 || true)
prometheus --version | head -1
