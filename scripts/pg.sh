#!/usr/bin/env bash
# A private, throwaway Postgres cluster for development and tests.
#
#   scripts/pg.sh start   # initdb if needed, start, create the database, print the URL
#   scripts/pg.sh url     # print the URL (does not start anything)
#   scripts/pg.sh stop    # fast shutdown; the data stays until `destroy`
#   scripts/pg.sh destroy # stop and delete the data folder
#   scripts/pg.sh status
#
# Why a script instead of a container: our machines run no Docker engine, and a cluster in a
# git-ignored folder of the checkout is the cheapest thing that is still a real Postgres.
# It listens on loopback only, on a non-default port, so it never collides with a system
# Postgres. When invoked as root it runs the server as the `postgres` user (initdb refuses
# to run as root).
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
PGDATA_DIR=${SLUICE_PGDATA:-$here/.pgdata}
PGPORT=${SLUICE_PGPORT:-54329}
PGDB=${SLUICE_PGDATABASE:-sluice}
URL="postgres://postgres@127.0.0.1:${PGPORT}/${PGDB}"

log() { echo "pg.sh: $*" >&2; }

find_bin() {
  local d
  for d in $(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V -r); do
    if [ -x "$d/initdb" ] && [ -x "$d/pg_ctl" ]; then echo "$d"; return 0; fi
  done
  return 1
}

ensure_bin() {
  if PGBIN=$(find_bin); then return 0; fi
  if [ "$(id -u)" = 0 ]; then
    log "no Postgres server binaries under /usr/lib/postgresql/*/bin; installing with apt-get"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq >&2
    apt-get install -y -qq postgresql >&2
    PGBIN=$(find_bin) || { log "apt-get install postgresql did not provide initdb"; exit 1; }
  else
    log "no Postgres server binaries found. Install them, e.g.: sudo apt-get install postgresql"
    exit 1
  fi
}

# Run a Postgres binary as the cluster's owner.
as_owner() {
  if [ "$(id -u)" = 0 ]; then
    runuser -u postgres -- "$@"
  else
    "$@"
  fi
}

is_running() {
  [ -f "$PGDATA_DIR/postmaster.pid" ] && as_owner "$PGBIN/pg_ctl" -D "$PGDATA_DIR" status >/dev/null 2>&1
}

start() {
  ensure_bin
  if [ ! -f "$PGDATA_DIR/PG_VERSION" ]; then
    mkdir -p "$PGDATA_DIR"
    if [ "$(id -u)" = 0 ]; then
      id postgres >/dev/null 2>&1 || useradd --system --home-dir /var/lib/postgresql --shell /bin/bash postgres
      chown postgres: "$PGDATA_DIR"
      # The owner must be able to reach the folder through every parent.
      chmod o+x "$(dirname "$PGDATA_DIR")" || true
    fi
    chmod 700 "$PGDATA_DIR"
    log "initdb in $PGDATA_DIR"
    as_owner "$PGBIN/initdb" -D "$PGDATA_DIR" -U postgres --auth=trust --encoding=UTF8 --no-locale >/dev/null
    cat >> "$PGDATA_DIR/postgresql.conf" <<CONF
# --- sluice private cluster ---
listen_addresses = '127.0.0.1'
port = $PGPORT
unix_socket_directories = '$PGDATA_DIR'
max_connections = 400
shared_buffers = 256MB
# fsync stays on: benchmarks must measure durable commits.
fsync = on
synchronous_commit = on
log_min_messages = warning
log_line_prefix = '%m [%p] '
CONF
  fi
  if is_running; then
    log "already running"
  else
    as_owner "$PGBIN/pg_ctl" -D "$PGDATA_DIR" -l "$PGDATA_DIR/server.log" -w -t 60 start >/dev/null
  fi
  as_owner "$PGBIN/psql" -h 127.0.0.1 -p "$PGPORT" -U postgres -d postgres -tAc \
    "SELECT 1 FROM pg_database WHERE datname = '$PGDB'" | grep -q 1 ||
    as_owner "$PGBIN/psql" -h 127.0.0.1 -p "$PGPORT" -U postgres -d postgres -qc "CREATE DATABASE \"$PGDB\"" >/dev/null
  echo "$URL"
}

stop() {
  PGBIN=$(find_bin) || exit 0
  if is_running; then
    as_owner "$PGBIN/pg_ctl" -D "$PGDATA_DIR" -m fast -w stop >/dev/null
    log "stopped"
  fi
}

case "${1:-}" in
  start) start ;;
  stop) stop ;;
  url) echo "$URL" ;;
  status) PGBIN=$(find_bin) || exit 1; if is_running; then echo running; else echo stopped; exit 3; fi ;;
  restart) stop; start ;;
  destroy) stop; rm -rf "$PGDATA_DIR"; log "removed $PGDATA_DIR" ;;
  *) echo "usage: $0 start|stop|restart|url|status|destroy" >&2; exit 2 ;;
esac
