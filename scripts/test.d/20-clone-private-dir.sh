#!/usr/bin/env bash
# `make run` / `make test` from a checkout the postgres user cannot enter: a fresh
# `git clone` into a 0700 folder (as `mktemp -d` makes, and as under /root), then the
# clone's own scripts/pg.sh start, `sluicectl migrate` and `sluicectl status` against it,
# then `destroy` removes the cluster. Also: when Postgres cannot start, `make db-up` (the
# first step of `make test` and `make run`) stops at once with pg.sh's one-line reason.
#
# Not a full `make test` inside the clone: that would rebuild everything and double CI time.
# The clone proves the scripts work from there; the sluicectl built by this run is the same
# code. Only meaningful as root (a non-root user runs Postgres as itself).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.."
if [ "$(id -u)" != 0 ]; then
  echo "20-clone-private-dir: skipped (not root; the postgres user is only involved as root)"
  exit 0
fi
fail() { echo "20-clone-private-dir: FAIL: $*" >&2; exit 1; }
cargo build -q -p sluice-cli
ctl=$PWD/${CARGO_TARGET_DIR:-target}/debug/sluicectl

outer=$(mktemp -d) # 0700, owned by root
[ "$(stat -c %a "$outer")" = 700 ] || fail "mktemp -d did not make a 0700 folder"
clone=$outer/sluice
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
cleanup() {
  [ -x "$clone/scripts/pg.sh" ] && SLUICE_PGPORT=$port "$clone/scripts/pg.sh" destroy >/dev/null 2>&1 || true
  rm -rf "$outer"
}
trap cleanup EXIT
git clone -q --no-hardlinks "$PWD" "$clone"
runuser -u postgres -- test -x "$clone" 2>/dev/null && fail "the postgres user can enter $clone; the check proves nothing"

url=$(cd "$clone" && SLUICE_PGPORT=$port scripts/pg.sh start) || fail "scripts/pg.sh start failed in $clone"
dir=$(cd "$clone" && SLUICE_PGPORT=$port scripts/pg.sh dir)
case "$dir" in "$clone"/*) fail "the cluster is inside the unreachable checkout: $dir" ;; esac
"$ctl" --database-url "$url" migrate >/dev/null || fail "sluicectl migrate against the clone's cluster"
"$ctl" --database-url "$url" status >/dev/null || fail "sluicectl status against the clone's cluster"
echo "20-clone-private-dir: pg.sh start + sluicectl migrate + status from a 0700 clone: ok ($dir)"

# A cluster that cannot start stops make at once, with pg.sh's reason on one line.
bad=$outer/unreachable/data
set +e
out=$(cd "$clone" && SLUICE_PGPORT=$port SLUICE_PGDATA=$bad DATABASE_URL= make -s db-up 2>&1)
rc=$?
set -e
[ "$rc" != 0 ] || fail "make db-up succeeded without a database: $out"
grep -q "^pg.sh: cannot start Postgres: .*$bad" <<<"$out" || fail "no clear reason from make db-up: $out"
grep -q "using database" <<<"$out" && fail "make went on without a database: $out"
echo "20-clone-private-dir: make stops when Postgres cannot start: ok"

(cd "$clone" && SLUICE_PGPORT=$port scripts/pg.sh destroy >/dev/null 2>&1)
[ ! -e "$(dirname "$dir")" ] || fail "destroy left $(dirname "$dir") behind"
echo "20-clone-private-dir: destroy removed the cluster: ok"
