#!/usr/bin/env bash
# A private, throwaway Postgres cluster for development and tests.
#
#   scripts/pg.sh start   # initdb if needed, start, create the database, print the URL
#   scripts/pg.sh url     # print the URL (does not start anything)
#   scripts/pg.sh stop    # fast shutdown; the data stays until `destroy`
#   scripts/pg.sh destroy # stop and delete the data folder
#   scripts/pg.sh status  # running / stopped (exit 3)
#   scripts/pg.sh dir     # print the data folder
#   scripts/pg.sh bin     # print the folder of the Postgres server binaries
#
# Why a script instead of a container: our machines run no Docker engine, and a cluster in a
# git-ignored folder of the checkout is the cheapest thing that is still a real Postgres.
# It listens on loopback only, on a non-default port, so it never collides with a system
# Postgres. When invoked as root it runs the server as the `postgres` user (initdb refuses
# to run as root).
#
# Where the data lives: `<checkout>/.pgdata` (git-ignored), or SLUICE_PGDATA. When run as
# root from a checkout the `postgres` user cannot enter (under /root, which is 0700, or a
# `mktemp -d` folder), the cluster goes to /var/tmp/sluice-pg-<hash of the checkout path>
# instead: still one per checkout, mode 0700 and owned by `postgres`, removed by `destroy`.
# The checkout's own permissions are never changed.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
PGPORT=${SLUICE_PGPORT:-54329}
PGDB=${SLUICE_PGDATABASE:-sluice}
URL="postgres://postgres@127.0.0.1:${PGPORT}/${PGDB}"

log() { echo "pg.sh: $*" >&2; }
# One line saying why, then exit 1: `make` stops on it instead of running with no database.
fail() { log "cannot start Postgres: $*"; exit 1; }

is_root() { [ "$(id -u)" = 0 ]; }

# The per-checkout folder outside the checkout, for checkouts `postgres` cannot reach.
fallback_dir() {
  local hash
  hash=$(printf '%s' "$here" | sha256sum | cut -c1-12)
  echo "/var/tmp/sluice-pg-$hash/data"
}

# Can the `postgres` user reach (search) this folder through every parent?
postgres_can_reach() {
  id postgres >/dev/null 2>&1 || return 0 # created below, with the same answer as `nobody`
  runuser -u postgres -- test -x "$1" 2>/dev/null
}

resolve_dir() {
  if [ -n "${SLUICE_PGDATA:-}" ]; then echo "$SLUICE_PGDATA"; return; fi
  local local_dir=$here/.pgdata
  if [ -f "$local_dir/PG_VERSION" ] || ! is_root || postgres_can_reach "$here"; then
    echo "$local_dir"
  else
    fallback_dir
  fi
}
PGDATA_DIR=$(resolve_dir)

find_bin() {
  local d
  for d in $(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V -r); do
    if [ -x "$d/initdb" ] && [ -x "$d/pg_ctl" ]; then echo "$d"; return 0; fi
  done
  return 1
}

ensure_bin() {
  if PGBIN=$(find_bin); then return 0; fi
  if is_root; then
    log "no Postgres server binaries under /usr/lib/postgresql/*/bin; installing with apt-get"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq >&2 || fail "apt-get update failed"
    apt-get install -y -qq postgresql >&2 || fail "apt-get install postgresql failed"
    PGBIN=$(find_bin) || fail "apt-get install postgresql did not provide initdb"
  else
    fail "no Postgres server binaries found. Install them, e.g.: sudo apt-get install postgresql"
  fi
}

ensure_postgres_user() {
  id postgres >/dev/null 2>&1 ||
    useradd --system --home-dir /var/lib/postgresql --shell /bin/bash postgres ||
    fail "cannot create the postgres user"
}

# Run a Postgres binary as the cluster's owner.
# From /, so a working directory the owner cannot enter draws no warnings.
as_owner() {
  if is_root; then
    (cd / && runuser -u postgres -- "$@")
  else
    "$@"
  fi
}

is_running() {
  [ -f "$PGDATA_DIR/postmaster.pid" ] && as_owner "$PGBIN/pg_ctl" -D "$PGDATA_DIR" status >/dev/null 2>&1
}

init_cluster() {
  if is_root; then
    ensure_postgres_user
    if [ "$PGDATA_DIR" = "$(fallback_dir)" ]; then
      local parent
      parent=$(dirname "$PGDATA_DIR")
      log "$here is not reachable by the postgres user; the cluster lives in $parent"
      install -d -m 0700 -o postgres -g postgres "$parent" || fail "cannot create $parent"
      echo "$here" > "$parent/checkout"
    fi
    mkdir -p "$PGDATA_DIR" || fail "cannot create $PGDATA_DIR"
    chown postgres: "$PGDATA_DIR"
    postgres_can_reach "$PGDATA_DIR" ||
      fail "the postgres user cannot reach $PGDATA_DIR (a parent folder is not searchable); set SLUICE_PGDATA to a folder it can reach"
  else
    mkdir -p "$PGDATA_DIR" || fail "cannot create $PGDATA_DIR"
  fi
  chmod 700 "$PGDATA_DIR"
  log "initdb in $PGDATA_DIR"
  local out
  if ! out=$(as_owner "$PGBIN/initdb" -D "$PGDATA_DIR" -U postgres --auth=trust --encoding=UTF8 --no-locale 2>&1); then
    fail "initdb in $PGDATA_DIR failed: $(echo "$out" | grep -m1 -iE 'error|fatal|denied' || echo "$out" | tail -n1)"
  fi
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
}

start() {
  ensure_bin
  [ -f "$PGDATA_DIR/PG_VERSION" ] || init_cluster
  if is_running; then
    log "already running ($PGDATA_DIR)"
  elif ! as_owner "$PGBIN/pg_ctl" -D "$PGDATA_DIR" -l "$PGDATA_DIR/server.log" -w -t 60 start >/dev/null 2>&1; then
    fail "pg_ctl start failed on port $PGPORT: $(tail -n 5 "$PGDATA_DIR/server.log" 2>/dev/null | grep -E 'FATAL|ERROR' | tail -n 1 | sed 's/^.*\(FATAL\|ERROR\)/\1/' || true) (log: $PGDATA_DIR/server.log)"
  fi
  local exists
  exists=$(as_owner "$PGBIN/psql" -h 127.0.0.1 -p "$PGPORT" -U postgres -d postgres -tAc \
    "SELECT 1 FROM pg_database WHERE datname = '$PGDB'" 2>&1) ||
    fail "the server on port $PGPORT does not answer: $exists"
  [ "$exists" = 1 ] ||
    as_owner "$PGBIN/psql" -h 127.0.0.1 -p "$PGPORT" -U postgres -d postgres -qc "CREATE DATABASE \"$PGDB\"" >/dev/null ||
    fail "cannot create database $PGDB"
  echo "$URL"
}

stop() {
  PGBIN=$(find_bin) || exit 0
  if is_running; then
    as_owner "$PGBIN/pg_ctl" -D "$PGDATA_DIR" -m fast -w stop >/dev/null
    log "stopped"
  fi
}

destroy() {
  stop
  if [ "$PGDATA_DIR" = "$(fallback_dir)" ]; then
    rm -rf "$(dirname "$PGDATA_DIR")"
    log "removed $(dirname "$PGDATA_DIR")"
  else
    rm -rf "$PGDATA_DIR"
    log "removed $PGDATA_DIR"
  fi
}

case "${1:-}" in
  start) start ;;
  stop) stop ;;
  url) echo "$URL" ;;
  dir) echo "$PGDATA_DIR" ;;
  bin) ensure_bin; echo "$PGBIN" ;;
  status) PGBIN=$(find_bin) || exit 1; if is_running; then echo running; else echo stopped; exit 3; fi ;;
  restart) stop; start ;;
  destroy) destroy ;;
  *) echo "usage: $0 start|stop|restart|url|dir|bin|status|destroy" >&2; exit 2 ;;
esac
