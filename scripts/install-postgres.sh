#!/usr/bin/env bash
# Debian's PostgreSQL server, for the tests and benchmarks of a node's state on
# PostgreSQL (throwaway clusters made with initdb/pg_ctl: consortium/launch/pgcluster.py).
# Installed once; a machine that has a server already is left alone. The package's own
# cluster is not needed and is left as Debian makes it.
set -euo pipefail
for bin in /usr/lib/postgresql/*/bin; do
  if [ -x "$bin/initdb" ] && [ -x "$bin/pg_ctl" ]; then
    exit 0
  fi
done
if command -v initdb >/dev/null 2>&1 && command -v pg_ctl >/dev/null 2>&1; then
  exit 0
fi
if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null 2>&1; then
  echo "install-postgres: Debian's postgresql package is needed (apt-get install postgresql)" >&2
  exit 1
fi
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends postgresql >/dev/null
ls /usr/lib/postgresql/*/bin/initdb
