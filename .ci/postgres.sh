#!/usr/bin/env bash
# Installs (if needed) and starts a throwaway PostgreSQL server on 127.0.0.1 for the tests that
# read party data from PostgreSQL, loads the flights data into one table per airport, and
# prints the environment those tests read. Usage: eval "$(.ci/postgres.sh start)"; .ci/postgres.sh stop
set -euo pipefail
cd "$(dirname "$0")/.."
PORT=${VEIL_PG_PORT:-54329}
DIR=${VEIL_PG_DIR:-/tmp/veil-ci-postgres}

pgbin() {
  local initdb
  initdb=$(ls /usr/lib/postgresql/*/bin/initdb 2>/dev/null | sort -V | tail -n 1 || true)
  if [ -z "$initdb" ]; then
    echo "installing PostgreSQL from the Debian packages" >&2
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq >&2
    apt-get install -y -qq postgresql >&2
    initdb=$(ls /usr/lib/postgresql/*/bin/initdb | sort -V | tail -n 1)
  fi
  dirname "$initdb"
}

as_postgres() {
  if [ "$(id -u)" = 0 ]; then su postgres -s /bin/bash -c "$*"; else bash -c "$*"; fi
}

case "${1:-start}" in
  start)
    BIN=$(pgbin)
    if [ -d "$DIR/data" ]; then as_postgres "$BIN/pg_ctl -D $DIR/data -m fast -w stop" >/dev/null 2>&1 || true; fi
    rm -rf "$DIR" && mkdir -p "$DIR"
    if [ "$(id -u)" = 0 ]; then chown postgres "$DIR"; fi
    as_postgres "$BIN/initdb -D $DIR/data -A trust -U postgres" >/dev/null
    as_postgres "$BIN/pg_ctl -D $DIR/data -l $DIR/log -w -o \"-p $PORT -k $DIR -c listen_addresses=127.0.0.1\" start" >/dev/null
    psql=("$BIN/psql" -q -h 127.0.0.1 -p "$PORT" -U postgres -v ON_ERROR_STOP=1)
    "${psql[@]}" -c "CREATE ROLE veil_reader LOGIN PASSWORD 'reader-secret'" >/dev/null
    for airport in ewr jfk lga; do
      "${psql[@]}" -c "CREATE TABLE flights_$airport (year int, month int, day int, carrier text, flight int,
        tailnum text, origin text, dest text, dep_delay float8, arr_delay float8, air_time float8,
        distance float8, hour int)" >/dev/null
      "${psql[@]}" -c "\\copy flights_$airport FROM 'examples/data/flights/$airport.csv' WITH (FORMAT csv, HEADER true)" >/dev/null
      "${psql[@]}" -c "GRANT SELECT ON flights_$airport TO veil_reader" >/dev/null
    done
    echo "export VEIL_TEST_POSTGRES='host=127.0.0.1 port=$PORT user=veil_reader dbname=postgres'"
    echo "export VEIL_TEST_POSTGRES_PASSWORD=reader-secret"
    ;;
  stop)
    BIN=$(dirname "$(ls /usr/lib/postgresql/*/bin/pg_ctl | sort -V | tail -n 1)")
    as_postgres "$BIN/pg_ctl -D $DIR/data -m fast -w stop" >/dev/null 2>&1 || true
    ;;
esac
