#!/usr/bin/env bash
# Makes sure `prometheus` and `promtool` are on PATH: the test suite checks the metrics,
# the config and the rules with promtool and runs a real Prometheus against a worker.
# Installs Debian's `prometheus` package when they are missing and we are root with apt;
# otherwise fails with what to do.
set -euo pipefail

have() { command -v prometheus >/dev/null 2>&1 && command -v promtool >/dev/null 2>&1; }

if ! have; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "ensure-prometheus: installing Debian's prometheus package (prometheus, promtool)" >&2
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends prometheus >/dev/null
  else
    cat >&2 <<'MSG'
ensure-prometheus: `prometheus` and `promtool` (Prometheus 2.x) must be on PATH for the tests.
  Debian/Ubuntu:  sudo apt-get install prometheus
  elsewhere:      https://prometheus.io/download/ (both binaries are in the tarball)
MSG
    exit 1
  fi
fi
have || { echo "ensure-prometheus: prometheus/promtool still not on PATH" >&2; exit 1; }
# The checks the tests use must exist in this version.
promtool check metrics </dev/null >/dev/null 2>&1 \
  && promtool test rules --help >/dev/null 2>&1 \
  || { echo "ensure-prometheus: $(promtool --version 2>&1 | head -1) lacks" \
       "'check metrics' or 'test rules'; Prometheus 2.x or later is needed" >&2; exit 1; }
