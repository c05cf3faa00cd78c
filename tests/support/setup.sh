#!/usr/bin/env bash
# Installs what the integration tests run beside the service, when missing: the test FHIR server
# (npm ci from its committed lockfile), and Debian's redis-server and Chromium (need root, as on
# CI machines; the tests start their own redis-server and never touch the shared one).
set -euo pipefail
cd "$(dirname "$0")/../.."
srv=tests/support/fhir-server
# One install at a time (two test runs on one checkout).
exec 9>"$srv/.setup.lock"
flock 9
# npm ci again only when the lockfile changed since the last install.
if ! cmp -s "$srv/package-lock.json" "$srv/node_modules/.package-lock.json.installed" 2>/dev/null; then
  (cd "$srv" && npm ci --no-audit --no-fund --loglevel=error >&2)
  cp "$srv/package-lock.json" "$srv/node_modules/.package-lock.json.installed"
fi
if ! command -v redis-server >/dev/null && [ "$(id -u)" = 0 ]; then
  { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq redis-server; } >&2
fi
if ! [ -x /usr/bin/chromium ] && [ "$(id -u)" = 0 ]; then
  { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium; } >&2
fi
