#!/usr/bin/env bash
# Make PostgreSQL, NATS (with JetStream) and Redis reachable for the platform.
#
# For each service: use it as is if it already answers; else, on a local
# address, start it if installed, or install it from Debian packages (Debian /
# Ubuntu only) and start it; anywhere else print the manual steps and fail.
# Remote addresses are only checked, never started or installed.
#
# Addresses (env vars, with defaults):
#   PLATFORM_DATABASE_URL        postgres://platform_app@127.0.0.1:5432/platform
#   PLATFORM_ADMIN_DATABASE_URL  postgres://postgres@127.0.0.1:5432/platform
#   PLATFORM_NATS_URL            nats://127.0.0.1:4222
#   PLATFORM_REDIS_URL           redis://127.0.0.1:6379
#
# Also installs Debian's chromium package when /usr/bin/chromium is missing: the
# GraphiQL test (gateway/tests/graphiql.rs) drives it headless. A missing browser
# is reported, but does not fail the script: serving does not need it.
#
# Progress goes to stderr; one summary line per service goes to stdout.
# Exit status is 0 only when all three services are reachable (and NATS has
# JetStream enabled). Containers instead: `docker compose up -d` (see
# docker-compose.yml at the repository root).
#
# SC2317: per-service functions are called indirectly ("probe_$svc", ...).
# SC2016: the single-quoted `bash -c` snippets get their values as $0/$1 on purpose.
# shellcheck disable=SC2317,SC2016
set -euo pipefail

PROG=${0##*/}

usage() {
    cat <<EOF
Usage: $PROG [--check] [--help]

Make PostgreSQL, NATS (JetStream) and Redis reachable for the platform.

  (no flag)  use running services as is; start installed-but-stopped local
             ones; on Debian/Ubuntu install missing local ones (apt-get, needs
             root or sudo); elsewhere print the manual steps and fail
  --check    only report; never start or install anything
  --help     show this help

Addresses (env vars, with defaults):
  PLATFORM_DATABASE_URL        postgres://platform_app@127.0.0.1:5432/platform
  PLATFORM_ADMIN_DATABASE_URL  postgres://postgres@127.0.0.1:5432/platform
  PLATFORM_NATS_URL            nats://127.0.0.1:4222
  PLATFORM_REDIS_URL           redis://127.0.0.1:6379

Only 127.0.0.1, localhost and ::1 are ever started or installed; other hosts
are only checked. Exit status is 0 only when all three are reachable.
Also installs Debian's chromium package (for the GraphiQL browser test) when
/usr/bin/chromium is missing; a missing browser does not change the exit status.
Container alternative: docker compose up -d   (see docker-compose.yml)
EOF
}

CHECK_ONLY=0
for arg in "$@"; do
    case $arg in
        --check) CHECK_ONLY=1 ;;
        -h | --help) usage; exit 0 ;;
        *) printf '%s: unknown argument: %s\n\n' "$PROG" "$arg" >&2; usage >&2; exit 2 ;;
    esac
done

DATABASE_URL=${PLATFORM_DATABASE_URL:-postgres://platform_app@127.0.0.1:5432/platform}
ADMIN_DATABASE_URL=${PLATFORM_ADMIN_DATABASE_URL:-postgres://postgres@127.0.0.1:5432/platform}
NATS_URL=${PLATFORM_NATS_URL:-nats://127.0.0.1:4222}
REDIS_URL=${PLATFORM_REDIS_URL:-redis://127.0.0.1:6379}

REPO_ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
WAIT_SECONDS=30
APT_UPDATED=0
PG_INSTALLED_BY_US=0
DETAIL=""          # set by the probe_* functions
STATUS=()          # summary lines, printed at the end

log() { printf '[services] %s\n' "$*" >&2; }
summary() { STATUS+=("$*"); }
have() { command -v "$1" >/dev/null 2>&1; }

# Run "$@" with a time limit if a timeout command exists (macOS may lack one).
with_timeout() {
    local secs=$1; shift
    if have timeout; then timeout "$secs" "$@"
    elif have gtimeout; then gtimeout "$secs" "$@"
    else "$@"
    fi
}

# ---------------------------------------------------------------------------
# URL parsing: scheme://[user[:password]@]host[:port][/path][?query]
# Sets URL_HOST, URL_PORT, URL_USER, URL_PATH. IPv6 hosts may be bracketed.
parse_url() {
    local url=$1 default_port=$2 rest authority userinfo=""
    rest=${url#*://}
    authority=${rest%%[/?#]*}
    URL_PATH=${rest:${#authority}}
    URL_PATH=${URL_PATH%%[?#]*}
    URL_PATH=${URL_PATH#/}
    if [[ $authority == *@* ]]; then
        userinfo=${authority%@*}
        authority=${authority##*@}
    fi
    URL_USER=${userinfo%%:*}
    if [[ $authority == \[* ]]; then            # [::1]:4222
        URL_HOST=${authority#\[}
        URL_HOST=${URL_HOST%%]*}
        URL_PORT=${authority#*]}
        URL_PORT=${URL_PORT#:}
    elif [[ $authority == *:*:* ]]; then        # bare IPv6, no port
        URL_HOST=$authority
        URL_PORT=""
    elif [[ $authority == *:* ]]; then
        URL_HOST=${authority%:*}
        URL_PORT=${authority##*:}
    else
        URL_HOST=$authority
        URL_PORT=""
    fi
    URL_HOST=${URL_HOST:-127.0.0.1}
    URL_PORT=${URL_PORT:-$default_port}
    if ! [[ $URL_PORT =~ ^[0-9]+$ ]] || ((URL_PORT < 1 || URL_PORT > 65535)); then
        printf '%s: bad port "%s" in URL %s\n' "$PROG" "$URL_PORT" "$url" >&2
        exit 2
    fi
}

is_local() { [[ $1 == 127.0.0.1 || $1 == localhost || $1 == ::1 ]]; }
hostport() { if [[ $1 == *:* ]]; then printf '[%s]:%s' "$1" "$2"; else printf '%s:%s' "$1" "$2"; fi; }
is_debian() { [[ -f /etc/debian_version ]]; }
is_macos() { [[ $(uname -s 2>/dev/null) == Darwin ]]; }
systemd_is_pid1() { [[ -r /proc/1/comm && $(cat /proc/1/comm) == systemd ]]; }

tcp_open() {
    with_timeout 2 bash -c 'exec 3<>"/dev/tcp/$0/$1"' "$1" "$2" 2>/dev/null
}

# Privileged execution: directly as root, else via sudo, else explain.
can_be_root() { [[ $EUID -eq 0 ]] || have sudo; }
as_root() {
    if [[ $EUID -eq 0 ]]; then "$@"
    elif have sudo; then sudo "$@"
    else log "root is needed to run: $* (run as root or install sudo)"; return 1
    fi
}

apt_install() {
    if ! have apt-get; then log "apt-get not found; cannot install $*"; return 1; fi
    if ! can_be_root; then log "root is needed to install $* (run this script as root, or install sudo)"; return 1; fi
    if ((APT_UPDATED == 0)); then
        log "running apt-get update"
        as_root apt-get update -qq >&2 || return 1
        APT_UPDATED=1
    fi
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends "$@" >&2
}

# ---------------------------------------------------------------------------
# Probes. Return 0 = usable, 1 = nothing listening, 2 = port open but the
# service is not usable (DETAIL says why).

probe_postgres() {
    DETAIL=""
    tcp_open "$1" "$2" || return 1
    have pg_isready || return 0
    local out
    if out=$(with_timeout 5 pg_isready -h "$1" -p "$2" -t 3 2>&1); then return 0; fi
    DETAIL="port is open but pg_isready says: ${out:-no response}"
    return 2
}

probe_redis() {
    DETAIL=""
    tcp_open "$1" "$2" || return 1
    [[ $REDIS_URL == rediss://* ]] && return 0    # TLS: TCP check only
    local out
    if have redis-cli; then
        out=$(with_timeout 5 redis-cli -h "$1" -p "$2" ping 2>&1 || true)
    else
        out=$(with_timeout 3 bash -c 'exec 3<>"/dev/tcp/$0/$1" || exit 1; printf "PING\r\n" >&3; IFS= read -r l <&3; printf "%s" "$l"' "$1" "$2" 2>/dev/null || true)
    fi
    case $out in
        *PONG*) return 0 ;;
        *NOAUTH* | *"Authentication required"*) DETAIL=" (requires auth)"; return 0 ;;
    esac
    DETAIL="port is open but it does not answer PING like Redis (${out:-no reply})"
    return 2
}

NATS_INFO=""
probe_nats() {
    DETAIL=""
    tcp_open "$1" "$2" || return 1
    NATS_INFO=$(with_timeout 3 bash -c 'exec 3<>"/dev/tcp/$0/$1" || exit 1; IFS= read -r l <&3; printf "%s" "$l"' "$1" "$2" 2>/dev/null || true)
    if [[ $NATS_INFO != INFO* ]]; then
        DETAIL="port is open but no NATS INFO greeting was received"
        return 2
    fi
    if ! [[ $NATS_INFO =~ \"jetstream\"[[:space:]]*:[[:space:]]*true ]]; then
        DETAIL="NATS is running but JetStream is OFF; the platform needs it (restart nats-server with -js)"
        return 2
    fi
    return 0
}

# ---------------------------------------------------------------------------
# Per-service install / start (Debian).

pg_version() {
    # shellcheck disable=SC2012  # version directories are plain numbers
    ls /etc/postgresql 2>/dev/null | sort -V | tail -n1
}
installed_postgres() {
    local v
    have pg_ctlcluster || return 1
    v=$(pg_version)
    [[ -n $v && -d /etc/postgresql/$v/main ]]
}
log_postgres() { printf '/var/log/postgresql/postgresql-%s-main.log' "$(pg_version)"; }
install_postgres() {
    apt_install postgresql || return 1
    PG_INSTALLED_BY_US=1
    if ! installed_postgres; then                 # binaries present, cluster missing
        local v
        # shellcheck disable=SC2012
        v=$(ls /usr/lib/postgresql 2>/dev/null | sort -V | tail -n1)
        [[ -n $v ]] || { log "postgres: no server version found under /usr/lib/postgresql"; return 1; }
        log "postgres: creating cluster $v/main"
        as_root pg_createcluster "$v" main >&2 || return 1
    fi
}
start_postgres() {
    local v conf cport
    v=$(pg_version)
    conf=/etc/postgresql/$v/main/postgresql.conf
    cport=$(sed -n 's/^[[:space:]]*port[[:space:]]*=[[:space:]]*\([0-9]*\).*/\1/p' "$conf" 2>/dev/null | tail -n1 || true)
    if [[ -n $cport && $cport != "$2" ]]; then
        log "postgres: WARNING: cluster $v/main is configured for port $cport, but the URL uses port $2 (see $conf)"
    fi
    as_root pg_ctlcluster --skip-systemctl-redirect "$v" main start >&2 && return 0
    systemd_is_pid1 && as_root systemctl start "postgresql@$v-main" >&2
}

installed_redis() { have redis-server; }
log_redis() { printf '/var/log/redis/ci.log'; }
install_redis() { apt_install redis-server; }
start_redis() {
    as_root mkdir -p /var/lib/redis /var/log/redis || return 1
    as_root redis-server --daemonize yes --bind 127.0.0.1 -::1 --port "$2" --save "" \
        --appendonly no --dir /var/lib/redis --logfile /var/log/redis/ci.log >&2 && return 0
    systemd_is_pid1 && as_root systemctl start redis-server >&2
}

nats_bin() {
    if [[ -x /usr/sbin/nats-server ]]; then printf '/usr/sbin/nats-server'
    else command -v nats-server
    fi
}
installed_nats() { nats_bin >/dev/null 2>&1; }
log_nats() { printf '/var/log/nats-server.log'; }
install_nats() { apt_install nats-server; }
start_nats() {
    local bin addr=127.0.0.1
    bin=$(nats_bin)
    [[ $1 == ::1 ]] && addr=::1
    as_root mkdir -p /var/lib/nats-server || return 1
    as_root start-stop-daemon --start --oknodo --background --exec "$bin" -- \
        -a "$addr" -p "$2" -js -sd /var/lib/nats-server -l /var/log/nats-server.log >&2 && return 0
    systemd_is_pid1 && as_root systemctl start nats-server >&2
}

pkg_of() { case $1 in postgres) echo postgresql ;; redis) echo redis-server ;; nats) echo nats-server ;; esac; }

# Manual steps for systems this script does not manage.
print_manual_steps() {
    local svc=$1 host=$2 port=$3
    log "$svc: cannot start/install automatically on this system. Do it yourself:"
    if is_macos; then
        case $svc in
            postgres) log "    brew install postgresql@16 && brew services start postgresql@16"
                      log "    createuser -s postgres    # Homebrew's superuser is your login name; the default URLs use 'postgres'" ;;
            redis)    log "    brew install redis && brew services start redis" ;;
            nats)     log "    brew install nats-server"
                      log "    mkdir -p ~/.local/share/nats && nats-server -js -a 127.0.0.1 -p $port -sd ~/.local/share/nats &    # -js is required" ;;
        esac
    else
        case $svc in
            postgres) log "    install PostgreSQL (>= 14) with your package manager, run it on $(hostport "$host" "$port"), and let user 'postgres' connect over TCP (trust or a password in the URL)" ;;
            redis)    log "    install Redis with your package manager and run: redis-server --bind 127.0.0.1 --port $port --save '' --appendonly no" ;;
            nats)     log "    get nats-server (package manager or https://github.com/nats-io/nats-server/releases) and run: nats-server -js -a 127.0.0.1 -p $port -sd /var/lib/nats-server" ;;
        esac
    fi
}

# After a usable PostgreSQL was found: cheap, non-fatal check of the admin URL.
postgres_admin_note() {
    have psql || return 0
    local err
    if err=$(PGCONNECT_TIMEOUT=5 with_timeout 10 psql -w -X -q -d "$ADMIN_DATABASE_URL" -Atc 'select 1' 2>&1 >/dev/null); then
        return 0
    fi
    err=$(printf '%s' "$err" | grep -m1 -E 'FATAL|error' || printf '%s' "$err" | head -n1)
    case $err in
        *"database"*"does not exist"*)
            log "postgres: database \"$PG_ADMIN_DB\" does not exist yet; platform serve (or platform migrate) creates it" ;;
        *) log "postgres: WARNING: cannot connect with PLATFORM_ADMIN_DATABASE_URL: $err" ;;
    esac
}

# Only for a cluster this script just installed/created: make sure the admin
# user can log in over TCP without a password (dev machine setup).
postgres_fix_auth() {
    local host=$1 port=$2 user=$3 v hba err
    have psql || return 0
    if err=$(PGCONNECT_TIMEOUT=5 psql -w -X -q -h "$host" -p "$port" -U "$user" -d postgres -Atc 'select 1' 2>&1 >/dev/null); then
        return 0
    fi
    case $err in
        *authentication* | *password* | *pg_hba.conf*) ;;
        *) log "postgres: WARNING: test login as '$user' failed: $err"; return 0 ;;
    esac
    v=$(pg_version)
    hba=/etc/postgresql/$v/main/pg_hba.conf
    log "postgres: ######################################################################"
    log "postgres: ## DEV MACHINE SETUP: enabling password-less (trust) auth for ALL users"
    log "postgres: ## on 127.0.0.1 and ::1, by adding at the top of $hba:"
    log "postgres: ##     host all all 127.0.0.1/32 trust"
    log "postgres: ##     host all all ::1/128 trust"
    log "postgres: ## Do not do this on a shared or production machine."
    log "postgres: ######################################################################"
    as_root sed -i \
        -e '1i # added by scripts/services.sh (dev machine): trust local TCP connections' \
        -e '1i host all all 127.0.0.1/32 trust' \
        -e '1i host all all ::1/128 trust' "$hba" || return 1
    as_root pg_ctlcluster --skip-systemctl-redirect "$v" main reload >&2 || return 1
    if ! err=$(PGCONNECT_TIMEOUT=5 psql -w -X -q -h "$host" -p "$port" -U "$user" -d postgres -Atc 'select 1' 2>&1 >/dev/null); then
        log "postgres: WARNING: login as '$user' still fails after the pg_hba.conf change: $err"
    fi
}

# Poll until the probe passes or WAIT_SECONDS elapse. Returns the last probe code.
wait_ready() {
    local svc=$1 host=$2 port=$3 i rc=1
    for ((i = 0; i < WAIT_SECONDS; i++)); do
        rc=0; "probe_$svc" "$host" "$port" || rc=$?
        ((rc == 0)) && return 0
        sleep 1
    done
    return "$rc"
}

# ---------------------------------------------------------------------------
# ensure SERVICE HOST PORT: make one service usable; records a summary line.
ensure() {
    local svc=$1 host=$2 port=$3 hp rc=0 how
    hp=$(hostport "$host" "$port")

    "probe_$svc" "$host" "$port" || rc=$?
    if ((rc == 0)); then
        if ((CHECK_ONLY)); then how="ok"; else how="used as is"; fi
        [[ $svc == nats ]] && hp="$hp with JetStream"
        summary "$svc: running at $hp$DETAIL ($how)"
        return 0
    fi
    if ((rc == 2)); then
        log "$svc: WARNING: $DETAIL"
        summary "$svc: PROBLEM at $hp: $DETAIL"
        return 1
    fi

    # Nothing listening.
    if ! is_local "$host"; then
        summary "$svc: NOT reachable at $hp (remote host: only checked, nothing started)"
        return 1
    fi
    if ((CHECK_ONLY)); then
        if "installed_$svc"; then how="installed but stopped"; else how="not installed"; fi
        summary "$svc: NOT reachable at $hp ($how; run scripts/services.sh without --check)"
        return 1
    fi
    if ! is_debian; then
        print_manual_steps "$svc" "$host" "$port"
        summary "$svc: NOT reachable at $hp (not Debian/Ubuntu: see the steps above)"
        return 1
    fi
    if ! can_be_root; then
        summary "$svc: NOT reachable at $hp; starting/installing it needs root (run as root or install sudo)"
        return 1
    fi

    if "installed_$svc"; then
        log "$svc: not reachable at $hp but installed; starting it"
        how="was stopped; started"
    else
        log "$svc: not installed; installing $(pkg_of "$svc") from Debian packages"
        if ! "install_$svc"; then
            summary "$svc: NOT reachable at $hp; installing $(pkg_of "$svc") failed (see apt-get output above)"
            return 1
        fi
        how="was not installed; installed $(pkg_of "$svc") and started"
    fi

    rc=0; "probe_$svc" "$host" "$port" || rc=$?    # the package may have started it
    if ((rc != 0)); then
        if ! "start_$svc" "$host" "$port"; then
            summary "$svc: NOT reachable at $hp; start command failed (look at $("log_$svc"))"
            return 1
        fi
        rc=0; wait_ready "$svc" "$host" "$port" || rc=$?
    fi
    if ((rc != 0)); then
        [[ -n $DETAIL ]] && log "$svc: $DETAIL"
        [[ $svc == nats ]] && log "nats: if another nats-server is already running with other options: pgrep -a nats-server"
        summary "$svc: NOT reachable at $hp ${WAIT_SECONDS}s after starting; look at $("log_$svc")"
        return 1
    fi
    summary "$svc: $how at $hp"
    return 0
}

# ---------------------------------------------------------------------------
# Chromium, for the GraphiQL test: not a service, so a missing browser is
# reported (the test fails saying so) but does not fail this script.
CHROMIUM=/usr/bin/chromium
ensure_chromium() {
    if [[ -x $CHROMIUM ]]; then
        summary "chromium: $CHROMIUM (for the GraphiQL test)"
        return 0
    fi
    if ((CHECK_ONLY)); then
        summary "chromium: NOT installed (the GraphiQL test needs it; run scripts/services.sh without --check)"
        return 1
    fi
    if ! is_debian; then
        summary "chromium: NOT installed (not Debian/Ubuntu: install Chromium and set CHROMIUM=<its path> for the GraphiQL test)"
        return 1
    fi
    log "chromium: not installed; installing chromium from Debian packages (for the GraphiQL test)"
    if ! apt_install chromium || [[ ! -x $CHROMIUM ]]; then
        summary "chromium: NOT installed; installing chromium failed (see apt-get output above)"
        return 1
    fi
    summary "chromium: was not installed; installed chromium ($CHROMIUM)"
}

FAILED=0

parse_url "$DATABASE_URL" 5432
PG_HOST=$URL_HOST PG_PORT=$URL_PORT
parse_url "$ADMIN_DATABASE_URL" 5432
PG_ADMIN_HOST=$URL_HOST PG_ADMIN_PORT=$URL_PORT PG_ADMIN_USER=${URL_USER:-postgres} PG_ADMIN_DB=${URL_PATH:-postgres}
parse_url "$NATS_URL" 4222
NATS_HOST=$URL_HOST NATS_PORT=$URL_PORT
parse_url "$REDIS_URL" 6379
REDIS_HOST=$URL_HOST REDIS_PORT=$URL_PORT

if ensure postgres "$PG_HOST" "$PG_PORT"; then
    if [[ $PG_ADMIN_HOST != "$PG_HOST" || $PG_ADMIN_PORT != "$PG_PORT" ]]; then
        # Different server for the admin URL: check it, never start it.
        rc=0; probe_postgres "$PG_ADMIN_HOST" "$PG_ADMIN_PORT" || rc=$?
        if ((rc == 0)); then
            summary "postgres (admin URL): running at $(hostport "$PG_ADMIN_HOST" "$PG_ADMIN_PORT") (used as is)"
        else
            summary "postgres (admin URL): NOT reachable at $(hostport "$PG_ADMIN_HOST" "$PG_ADMIN_PORT") ${DETAIL}"
            FAILED=1
        fi
    fi
    if ((PG_INSTALLED_BY_US)); then
        postgres_fix_auth "$PG_ADMIN_HOST" "$PG_ADMIN_PORT" "$PG_ADMIN_USER" || log "postgres: WARNING: could not adjust pg_hba.conf"
    fi
    postgres_admin_note
else
    FAILED=1
fi
ensure nats "$NATS_HOST" "$NATS_PORT" || FAILED=1
ensure redis "$REDIS_HOST" "$REDIS_PORT" || FAILED=1
ensure_chromium || true

printf '%s\n' "${STATUS[@]}"
if ((FAILED)); then
    if ((CHECK_ONLY == 0)) && ! is_debian; then
        log "alternative with Docker: (cd $REPO_ROOT && docker compose up -d)   # see docker-compose.yml"
    fi
    exit 1
fi
exit 0
