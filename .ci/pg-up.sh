#!/usr/bin/env bash
# Start a throw-away PostgreSQL on loopback and print its URL. Used by .ci/run; handy locally:
#   export FOUNDRY_TELEMETRY_TEST_PG_URL=$(.ci/pg-up.sh)
set -euo pipefail
port="${PGPORT_TEST:-55432}"
dir="${PGDATA_TEST:-/tmp/foundry-telemetry-pg}"

bindir=""
for cand in "$(dirname "$(command -v initdb 2>/dev/null || echo /nonexistent)")" /usr/lib/postgresql/*/bin; do
  if [ -x "$cand/initdb" ] && [ -x "$cand/pg_ctl" ]; then bindir="$cand"; break; fi
done
if [ -z "$bindir" ]; then
  echo "installing postgresql" >&2
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq >&2 && apt-get install -y -qq postgresql >&2
  bindir=$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -n 1)
fi

as_pg=()
if [ "$(id -u)" = "0" ]; then
  id postgres >/dev/null 2>&1 || useradd --system --no-create-home postgres
  as_pg=(runuser -u postgres --)
fi

if ! "${as_pg[@]}" "$bindir/pg_ctl" -D "$dir" status >/dev/null 2>&1; then
  rm -rf "$dir"
  mkdir -p "$dir"
  [ "$(id -u)" = "0" ] && chown postgres "$dir"
  "${as_pg[@]}" "$bindir/initdb" -D "$dir" -U postgres -A trust --no-sync >/dev/null
  "${as_pg[@]}" "$bindir/pg_ctl" -D "$dir" -l "$dir/server.log" -w \
    -o "-p $port -k /tmp -c listen_addresses=127.0.0.1 -c fsync=off -c max_connections=200" start >/dev/null
fi
echo "postgresql://postgres@127.0.0.1:$port/postgres"
