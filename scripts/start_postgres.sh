#!/usr/bin/env bash
# Start a throwaway PostgreSQL server for the database tests and print how to reach it.
#
#   eval "$(bash scripts/start_postgres.sh)"   # sets TUNELAB_TEST_POSTGRES_URL
#
# Idempotent: installs PostgreSQL from Debian's packages only if no initdb exists under
# /usr/lib/postgresql/*/bin, creates our own cluster (not Debian's managed one: no systemd
# here) only if the data directory holds none, starts it only if nothing answers on the port,
# creates the database only if it is missing. Safe to run twice at once (a lock serialises runs).
#
#   TUNELAB_PG_DIR   data directory (default /tmp/tunelab-pg); owned by the postgres user,
#                    so its parent must be traversable by that user
#   TUNELAB_PG_PORT  TCP port on 127.0.0.1 (default 55432)
#
# The server listens on 127.0.0.1 only, with trust authentication on loopback only; its unix
# socket lives in the data directory (mode 0700: root and postgres only). Stop it with
#   runuser -u postgres -- /usr/lib/postgresql/*/bin/pg_ctl -D /tmp/tunelab-pg stop
# The one line on stdout is the export; everything else goes to stderr.
set -euo pipefail

PG_DIR="${TUNELAB_PG_DIR:-/tmp/tunelab-pg}"
PG_PORT="${TUNELAB_PG_PORT:-55432}"
PG_DB=tunelab_test
PG_USER=postgres

exec 3>&1 1>&2  # stdout is reserved for the final export line
log() { echo "start_postgres: $*"; }
die() { echo "start_postgres: error: $*"; exit 1; }

[[ "$PG_PORT" =~ ^[0-9]+$ ]] || die "TUNELAB_PG_PORT must be a number, got '$PG_PORT'"
[[ "$PG_DIR" = /* ]] || PG_DIR="$(pwd)/$PG_DIR"
[ "$(id -u)" -eq 0 ] || die "run as root (it installs packages and runs the server as '$PG_USER')"

# One run at a time for this data directory: two concurrent runs would both run initdb.
mkdir -p "$(dirname "$PG_DIR")"
exec 9>"$PG_DIR.lock"
flock 9

# The newest version whose initdb exists, or "" if none.
find_bin() {
  local d
  for d in $(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V -r); do
    if [ -x "$d/initdb" ] && [ -x "$d/pg_ctl" ]; then echo "$d"; return; fi
  done
}

PG_BIN="$(find_bin)"
if [ -z "$PG_BIN" ]; then
  log "no PostgreSQL under /usr/lib/postgresql; installing Debian's postgresql package"
  # Debian's package would create and (where services may start) run its own cluster on
  # port 5432; we run our own, so tell postgresql-common not to make one.
  mkdir -p /etc/postgresql-common/createcluster.d
  echo "create_main_cluster = false" >/etc/postgresql-common/createcluster.d/tunelab-no-main-cluster.conf
  apt-get update
  DEBIAN_FRONTEND=noninteractive apt-get install -y postgresql
  PG_BIN="$(find_bin)"
  [ -n "$PG_BIN" ] || die "installed postgresql but found no initdb under /usr/lib/postgresql/*/bin"
fi

# An existing cluster needs the binaries of its own major version.
if [ -f "$PG_DIR/PG_VERSION" ]; then
  want="$(cat "$PG_DIR/PG_VERSION")"
  [ -x "/usr/lib/postgresql/$want/bin/pg_ctl" ] \
    || die "$PG_DIR holds a PostgreSQL $want cluster but /usr/lib/postgresql/$want/bin is missing; remove $PG_DIR or install postgresql-$want"
  PG_BIN="/usr/lib/postgresql/$want/bin"
fi
log "using $PG_BIN"

if ! getent passwd "$PG_USER" >/dev/null; then
  log "creating system user $PG_USER"
  useradd --system --user-group --home-dir /var/lib/postgresql --no-create-home \
    --shell /bin/bash --comment "PostgreSQL administrator" "$PG_USER"
fi

# Run a command as the postgres user, from a directory it can read (not root's cwd), with no
# file descriptors but 0-2: the server would inherit the rest and hold them for its lifetime,
# e.g. the stdout pipe of `$(...)` (the caller would wait forever) or the lock on fd 9.
as_pg() {
  (
    cd /
    for fd in /proc/self/fd/*; do
      fd="${fd##*/}"
      if [[ "$fd" =~ ^[0-9]+$ ]] && [ "$fd" -gt 2 ]; then eval "exec $fd>&-"; fi
    done
    exec runuser -u "$PG_USER" -- "$@"
  )
}

ready() { "$PG_BIN/pg_isready" -q -h 127.0.0.1 -p "$PG_PORT" -t 3; }

if ready; then
  log "a server already answers on 127.0.0.1:$PG_PORT; reusing it"
else
  if [ ! -f "$PG_DIR/PG_VERSION" ]; then
    if [ -d "$PG_DIR" ] && [ -n "$(ls -A "$PG_DIR")" ]; then
      die "$PG_DIR exists, is not empty and holds no cluster; remove it or set TUNELAB_PG_DIR"
    fi
    log "creating a cluster in $PG_DIR"
    mkdir -p "$PG_DIR"
    chown "$PG_USER:" "$PG_DIR"
    chmod 0700 "$PG_DIR"
    as_pg test -w "$PG_DIR" \
      || die "user $PG_USER cannot reach $PG_DIR (a parent directory closed to it?); set TUNELAB_PG_DIR elsewhere"
    as_pg "$PG_BIN/initdb" -D "$PG_DIR" --username="$PG_USER" --auth=trust \
      --encoding=UTF8 --locale=C >/dev/null
    echo "include_if_exists = 'tunelab.conf'  # written by scripts/start_postgres.sh" \
      >>"$PG_DIR/postgresql.conf"
  fi
  # Rewritten every start, so a changed TUNELAB_PG_PORT takes effect.
  cat >"$PG_DIR/tunelab.conf" <<EOF
# Written by scripts/start_postgres.sh on every start; edits are lost.
listen_addresses = '127.0.0.1'
port = $PG_PORT
unix_socket_directories = '$PG_DIR'
# Tests open many engines and worker processes at once.
max_connections = 200
# Throwaway test data: durability is not worth the time (a crash may corrupt this cluster).
fsync = off
synchronous_commit = off
full_page_writes = off
EOF
  cat >"$PG_DIR/pg_hba.conf" <<EOF
# Written by scripts/start_postgres.sh: trust, loopback only (the socket directory is the
# 0700 data directory, so only root and $PG_USER reach the unix socket).
# TYPE  DATABASE  USER  ADDRESS        METHOD
local   all       all                  trust
host    all       all   127.0.0.1/32   trust
EOF
  chown "$PG_USER:" "$PG_DIR/tunelab.conf" "$PG_DIR/pg_hba.conf"

  if as_pg "$PG_BIN/pg_ctl" -D "$PG_DIR" status >/dev/null 2>&1; then
    # Our cluster runs but not on this port (TUNELAB_PG_PORT changed): restart it on this one.
    log "cluster in $PG_DIR runs on another port; restarting it on $PG_PORT"
    action=restart
  else
    action=start
  fi
  log "${action}ing the server on 127.0.0.1:$PG_PORT (log: $PG_DIR/logfile)"
  if ! as_pg "$PG_BIN/pg_ctl" -D "$PG_DIR" -l "$PG_DIR/logfile" -w -t 60 "$action" >/dev/null; then
    tail -n 30 "$PG_DIR/logfile" || true
    die "the server did not start; see $PG_DIR/logfile"
  fi
  ready || die "the server started but does not answer on 127.0.0.1:$PG_PORT"
fi

psql() { "$PG_BIN/psql" -X -q -v ON_ERROR_STOP=1 -h 127.0.0.1 -p "$PG_PORT" -U "$PG_USER" -d postgres "$@"; }
db_exists() { [ "$(psql -tAc "SELECT 1 FROM pg_database WHERE datname = '$PG_DB'")" = 1 ]; }
if db_exists; then
  log "database $PG_DB exists"
else
  # A concurrent creator (another server user) may win the race: then it exists, which is fine.
  psql -c "CREATE DATABASE $PG_DB" || db_exists || die "could not create database $PG_DB"
  log "created database $PG_DB"
fi

echo "export TUNELAB_TEST_POSTGRES_URL=postgresql+psycopg://$PG_USER@127.0.0.1:$PG_PORT/$PG_DB" >&3
