#!/bin/sh
# The official postgres image's contract, in small: on an empty $PGDATA, make a cluster whose
# superuser is $POSTGRES_USER (default postgres) with password $POSTGRES_PASSWORD, and the
# database $POSTGRES_DB (default: the user's name), then run the *.sql files of
# /docker-entrypoint-initdb.d in that database on a server only this script reaches; then run
# the server as the postgres user, listening on every address of the container with password
# (scram-sha-256) authentication, or none where POSTGRES_HOST_AUTH_METHOD=trust (nodes of a
# cluster on a network of their own, as the official image allows).
set -eu

if [ "${1#-}" != "$1" ]; then set -- postgres "$@"; fi
if [ "$1" != postgres ]; then exec "$@"; fi

as_postgres() { setpriv --reuid=postgres --regid=postgres --init-groups "$@"; }
# the server's own home (libpq, as a Citus node's client of the others, reads ~/.postgresql)
export HOME=/var/lib/postgresql

POSTGRES_USER="${POSTGRES_USER:-postgres}"
POSTGRES_DB="${POSTGRES_DB:-$POSTGRES_USER}"
AUTH="${POSTGRES_HOST_AUTH_METHOD:-scram-sha-256}"
mkdir -p "$PGDATA" /var/run/postgresql
chown postgres:postgres "$PGDATA" /var/run/postgresql
chmod 700 "$PGDATA"

if [ ! -s "$PGDATA/PG_VERSION" ]; then
  pwfile="$(mktemp)"
  if [ "$AUTH" = trust ]; then
    printf '%s\n' "${POSTGRES_PASSWORD:-$(od -An -N16 -tx1 /dev/urandom | tr -d ' \n')}" >"$pwfile"
  elif [ -n "${POSTGRES_PASSWORD:-}" ]; then
    printf '%s\n' "$POSTGRES_PASSWORD" >"$pwfile"
  else
    echo "POSTGRES_PASSWORD must be set: the server accepts connections by password" >&2
    exit 1
  fi
  chown postgres "$pwfile"
  as_postgres initdb -D "$PGDATA" -U "$POSTGRES_USER" --pwfile="$pwfile" -E UTF8 \
    --locale=C.UTF-8 --auth-local=trust --auth-host="$AUTH" >/dev/null
  rm -f "$pwfile"
  echo "host all all all $AUTH" >>"$PGDATA/pg_hba.conf"
  echo "listen_addresses = '*'" >>"$PGDATA/postgresql.conf"
  if [ "$POSTGRES_DB" != postgres ]; then
    echo "CREATE DATABASE \"$POSTGRES_DB\"" | as_postgres postgres --single -D "$PGDATA" postgres >/dev/null
  fi
  scripts="$(find /docker-entrypoint-initdb.d -maxdepth 1 -name '*.sql' 2>/dev/null | sort)"
  if [ -n "$scripts" ]; then
    # on the socket only, with the options the server will run with (the command's after
    # "postgres": the Citus image's preloads the extension)
    options="$(shift; echo "$@")"
    as_postgres pg_ctl -D "$PGDATA" -w -o "-c listen_addresses='' $options" start >/dev/null
    for script in $scripts; do
      echo "running $script"
      as_postgres psql -v ON_ERROR_STOP=1 -U "$POSTGRES_USER" -d "$POSTGRES_DB" -f "$script" >/dev/null
    done
    as_postgres pg_ctl -D "$PGDATA" -m fast -w stop >/dev/null
  fi
  echo "initialised $PGDATA: user $POSTGRES_USER, database $POSTGRES_DB"
fi
exec setpriv --reuid=postgres --regid=postgres --init-groups "$@"
