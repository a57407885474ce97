#!/usr/bin/env bash
# A Citus cluster on this machine for the tests and benchmarks: one coordinator and two
# workers, each its own PostgreSQL 15 server (Debian's), on 127.0.0.1 with trust
# authentication. Where Docker Hub is reachable, compose.yaml's `citus` profile runs the
# official citusdata/citus image instead (docs/citus.md); this is for machines where no
# registry carries Citus: it builds Citus from its source.
#
#   scripts/citus-cluster.sh start [SRC]   build and install Citus from SRC (a source tree or a
#                                          .tar.gz of one; default $CITUS_SRC) unless it is
#                                          installed, then create and start the three nodes
#                                          (each step skipped when done) and register the
#                                          workers with the coordinator; prints its URL.
#   scripts/citus-cluster.sh stop          stop the three nodes (their data stays)
#   scripts/citus-cluster.sh status        what runs, and the node list
#
# A database for the service is made on every node with the extension and registered with
# its coordinator (docs/citus.md, "A database on the cluster"); the tests do that for each
# run's own database (tests/support/databases.py).
#
# Environment (all optional): CITUS_SRC, CITUS_BASE (data directories, default /tmp/citus:
# c, w1, w2), CITUS_PORT (the coordinator's port, default 9700; the workers take the next
# two), PG_BIN (default /usr/lib/postgresql/15/bin). As root, the servers run as the OS user
# postgres (initdb refuses root). Build dependencies are installed with apt-get when missing.
set -euo pipefail

PG_BIN=${PG_BIN:-/usr/lib/postgresql/15/bin}
BASE=${CITUS_BASE:-/tmp/citus}
PORT=${CITUS_PORT:-9700}
NODES=(c w1 w2)
BUILD_DEPS=(postgresql-server-dev-15 libcurl4-openssl-dev liblz4-dev libzstd-dev libkrb5-dev
            libssl-dev libselinux1-dev libxslt1-dev libpam0g-dev libreadline-dev flex bison
            autoconf make gcc)

die() { echo "citus-cluster: $*" >&2; exit 1; }

if [ "$(id -u)" = 0 ]; then
    OWNER=postgres
    as_owner() { runuser -u "$OWNER" -- "$@"; }
else
    OWNER=$(id -un)
    as_owner() { "$@"; }
fi

port_of() { echo $((PORT + $1)); }

psql_at() { # port db sql...
    local port=$1 db=$2
    shift 2
    as_owner "$PG_BIN/psql" -X -q -v ON_ERROR_STOP=1 -h 127.0.0.1 -p "$port" -U "$OWNER" \
        -d "$db" -At "$@"
}

installed() {
    [ -f "$("$PG_BIN/pg_config" --pkglibdir)/citus.so" ] &&
        [ -f "$("$PG_BIN/pg_config" --sharedir)/extension/citus.control" ]
}

build() { # source tree or tarball
    local src=$1
    if installed; then
        echo "citus: installed ($("$PG_BIN/pg_config" --pkglibdir)/citus.so)"
        return
    fi
    [ -n "$src" ] || die "Citus is not installed: give its source (start SRC, or CITUS_SRC)"
    if [ -f "$src" ]; then
        mkdir -p "$BASE/src"
        tar -xzf "$src" -C "$BASE/src"
        src=$(find "$BASE/src" -maxdepth 2 -name configure -printf '%h\n' | head -n 1)
    fi
    [ -f "$src/configure" ] || die "$src has no configure script: not a Citus source tree"
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
        local missing=() d
        for d in "${BUILD_DEPS[@]}"; do dpkg -s "$d" >/dev/null 2>&1 || missing+=("$d"); done
        if [ ${#missing[@]} -gt 0 ]; then
            echo "citus: installing build dependencies: ${missing[*]}"
            apt-get update -qq >/dev/null
            DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
        fi
    fi
    echo "citus: building from $src (about 2 minutes on two cores)"
    (
        cd "$src"
        [ -f Makefile.global ] || nice -n 19 ./configure PG_CONFIG="$PG_BIN/pg_config" >configure.log
        nice -n 19 make -j"$(nproc)" >make.log
        make install >install.log
    ) || die "the build failed: see configure.log, make.log and install.log in $src"
    installed || die "make install finished but citus.so is not in place"
}

start_node() { # index
    local i=$1 dir=$BASE/${NODES[$1]} port
    port=$(port_of "$i")
    if [ ! -f "$dir/PG_VERSION" ]; then
        mkdir -p "$dir"
        chmod 700 "$dir"
        [ "$OWNER" = "$(id -un)" ] || chown "$OWNER" "$BASE" "$dir"
        as_owner "$PG_BIN/initdb" -D "$dir" -U "$OWNER" --auth=trust -E UTF8 --locale=C.UTF-8 \
            >"$BASE/${NODES[$i]}-initdb.log"
        # The log in the data directory, readable over SQL (pg_current_logfile): the tests
        # count what each node runs (tests/integration/test_citus.py).
        cat >>"$dir/postgresql.conf" <<EOF

# scripts/citus-cluster.sh
port = $port
listen_addresses = '127.0.0.1'
unix_socket_directories = '$BASE'
shared_preload_libraries = 'citus'
max_connections = 300
max_prepared_transactions = 300
logging_collector = on
log_directory = 'log'
log_filename = 'node.log'
log_line_prefix = '%m [%p] db=%d '
EOF
    fi
    if as_owner "$PG_BIN/pg_ctl" -D "$dir" status >/dev/null 2>&1; then
        echo "node ${NODES[$i]}: running on port $port"
    else
        as_owner "$PG_BIN/pg_ctl" -D "$dir" -l "$BASE/${NODES[$i]}.log" -w -t 60 start >/dev/null ||
            die "node ${NODES[$i]} did not start: see $BASE/${NODES[$i]}.log"
        echo "node ${NODES[$i]}: started on port $port"
    fi
}

register() { # the coordinator's postgres database lists the nodes (the tests read it there)
    local i c wp
    for i in 0 1 2; do
        if [ "$(psql_at "$(port_of "$i")" postgres -c "SELECT count(*) FROM pg_extension WHERE extname = 'citus'")" = 0 ]; then
            psql_at "$(port_of "$i")" postgres -c "CREATE EXTENSION citus"
        fi
    done
    c=$(port_of 0)
    psql_at "$c" postgres -c "SELECT citus_set_coordinator_host('127.0.0.1', $c)" >/dev/null
    for i in 1 2; do
        wp=$(port_of "$i")
        if [ "$(psql_at "$c" postgres -c "SELECT count(*) FROM pg_dist_node WHERE nodeport = $wp")" = 0 ]; then
            psql_at "$c" postgres -c "SELECT citus_add_node('127.0.0.1', $wp)" >/dev/null
        fi
    done
}

stop_all() {
    local i dir
    for i in 2 1 0; do
        dir=$BASE/${NODES[$i]}
        if [ -f "$dir/PG_VERSION" ] && as_owner "$PG_BIN/pg_ctl" -D "$dir" status >/dev/null 2>&1; then
            as_owner "$PG_BIN/pg_ctl" -D "$dir" -m fast -w stop >/dev/null
            echo "node ${NODES[$i]}: stopped"
        fi
    done
}

status_all() {
    local i dir
    for i in 0 1 2; do
        dir=$BASE/${NODES[$i]}
        if [ -f "$dir/PG_VERSION" ] && as_owner "$PG_BIN/pg_ctl" -D "$dir" status >/dev/null 2>&1; then
            echo "node ${NODES[$i]}: running on port $(port_of "$i")"
        else
            echo "node ${NODES[$i]}: not running"
        fi
    done
    psql_at "$(port_of 0)" postgres -c "SELECT nodename || ':' || nodeport FROM pg_dist_node ORDER BY nodeid" 2>/dev/null || true
}

case "${1:-}" in
    start)
        [ -x "$PG_BIN/initdb" ] || die "no PostgreSQL server binaries in $PG_BIN"
        build "${2:-${CITUS_SRC:-}}"
        mkdir -p "$BASE"
        for i in 0 1 2; do start_node "$i"; done
        register
        echo "coordinator: postgresql://$OWNER@127.0.0.1:$(port_of 0)"
        ;;
    stop) stop_all ;;
    status) status_all ;;
    *)
        sed -n '2,24p' "$0" | sed 's/^# \{0,1\}//'
        exit 2
        ;;
esac
