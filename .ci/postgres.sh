#!/usr/bin/env bash
# Start a throwaway PostgreSQL cluster on 127.0.0.1 for the `postgres` tests; source this file.
# It installs Debian's postgresql when missing, picks a free port, keeps its data in a temp folder,
# and stops the cluster on exit. On success it exports IMBALANCE_SWEEP_TEST_POSTGRES_URL and
# IMBALANCE_SWEEP_TEST_POSTGRES_MLFLOW_URL. On any failure it prints why and exports nothing.

start_test_postgres() {
  local bin
  bin=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1)
  if [[ -z "$bin" ]]; then
    echo "PostgreSQL not found: installing Debian's postgresql"
    { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >/dev/null; } || return 1
    bin=$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -n 1)
  fi
  id postgres >/dev/null 2>&1 || return 1  # initdb refuses to run as root; the package creates this user

  PG_TEST_DIR=$(mktemp -d)
  chown postgres "$PG_TEST_DIR"
  local port
  port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
  runuser -u postgres -- "$bin/initdb" -D "$PG_TEST_DIR/data" -A trust -U postgres >/dev/null || return 1
  runuser -u postgres -- "$bin/pg_ctl" -D "$PG_TEST_DIR/data" -l "$PG_TEST_DIR/server.log" -w \
    -o "-p $port -c listen_addresses=127.0.0.1 -k $PG_TEST_DIR" start >/dev/null || return 1
  PG_TEST_CTL="$bin/pg_ctl"
  trap stop_test_postgres EXIT
  for database in sweeps mlflow; do
    runuser -u postgres -- "$bin/createdb" -h 127.0.0.1 -p "$port" -U postgres "$database" || return 1
  done
  export IMBALANCE_SWEEP_TEST_POSTGRES_URL="postgresql+psycopg2://postgres@127.0.0.1:$port/sweeps"
  export IMBALANCE_SWEEP_TEST_POSTGRES_MLFLOW_URL="postgresql+psycopg2://postgres@127.0.0.1:$port/mlflow"
  echo "PostgreSQL test server on 127.0.0.1:$port (data in $PG_TEST_DIR)"
}

stop_test_postgres() {
  if [[ -n "${PG_TEST_DIR:-}" ]]; then
    runuser -u postgres -- "$PG_TEST_CTL" -D "$PG_TEST_DIR/data" -m fast stop >/dev/null 2>&1
    rm -rf "$PG_TEST_DIR"
  fi
}

if ! start_test_postgres; then
  echo "PostgreSQL test server could not start: the postgres tests will be skipped"
  stop_test_postgres
  unset PG_TEST_DIR
fi
