#!/usr/bin/env bash
# Make sure the PostgreSQL, Redis and RabbitMQ that the test suite uses are up on 127.0.0.1 (with
# RabbitMQ's virtual host for the tests, outbox_test), and Chromium and
# docker-compose (which validates compose.yaml, tests/test_compose.py) are there.
# Starts them when they are installed but stopped; says what is missing otherwise.
set -u

PG_HOST=127.0.0.1 PG_PORT=5432 REDIS_PORT=6379 RABBITMQ_PORT=5672

listening() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

wait_for() {  # port, name: up to 30 s
    for _ in $(seq 1 60); do listening "$1" && return 0; sleep 0.5; done
    echo "error: $2 did not start listening on 127.0.0.1:$1 within 30 s." >&2
    return 1
}

status=0

if ! listening "$PG_PORT"; then
    if command -v pg_ctlcluster >/dev/null 2>&1 && [ -d /etc/postgresql ]; then
        echo "Starting PostgreSQL..."
        pg_ctlcluster --skip-systemctl-redirect "$(ls /etc/postgresql | head -n 1)" main start || true
        wait_for "$PG_PORT" PostgreSQL || status=1
    else
        echo "error: PostgreSQL is not running on $PG_HOST:$PG_PORT and is not installed here." >&2
        echo "       Install PostgreSQL 15 (Debian: apt-get install postgresql), or point DATABASE_URL" >&2
        echo "       at a server whose user may create databases." >&2
        status=1
    fi
fi

if ! listening "$REDIS_PORT"; then
    if command -v redis-server >/dev/null 2>&1; then
        echo "Starting Redis..."
        mkdir -p /var/lib/redis /var/log/redis 2>/dev/null || true
        redis-server --daemonize yes --bind 127.0.0.1 -::1 --port "$REDIS_PORT" --save "" --appendonly no \
            --dir /var/lib/redis --logfile /var/log/redis/ci.log || true
        wait_for "$REDIS_PORT" Redis || status=1
    else
        echo "error: Redis is not running on 127.0.0.1:$REDIS_PORT and is not installed here." >&2
        echo "       Install Redis 7 (Debian: apt-get install redis-server), or point REDIS_URL at one." >&2
        status=1
    fi
fi

if ! listening "$RABBITMQ_PORT"; then
    if command -v rabbitmq-server >/dev/null 2>&1; then
        echo "Starting RabbitMQ..."
        rabbitmq-server -detached || true
        wait_for "$RABBITMQ_PORT" RabbitMQ || status=1
    else
        echo "error: RabbitMQ is not running on 127.0.0.1:$RABBITMQ_PORT and is not installed here." >&2
        echo "       Install it (Debian: apt-get install rabbitmq-server), or point TEST_RABBITMQ_URL at one." >&2
        status=1
    fi
fi
# The tests' own virtual host, so that they never touch another application's queues.
if command -v rabbitmqctl >/dev/null 2>&1 && listening "$RABBITMQ_PORT"; then
    if ! rabbitmqctl -q list_vhosts 2>/dev/null | grep -qx outbox_test; then
        # Right after a start the node may still be booting: wait for it, then add the host.
        rabbitmqctl -q await_startup >/dev/null 2>&1 || true
        rabbitmqctl -q add_vhost outbox_test >/dev/null 2>&1 || true
    fi
    rabbitmqctl -q set_permissions -p outbox_test guest ".*" ".*" ".*" >/dev/null 2>&1 || true
fi

# The browser tests drive Debian's Chromium (tests/browser): install it when it is missing.
if [ ! -x /usr/bin/chromium ]; then
    if command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
        echo "Installing Chromium for the browser tests..."
        (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null) || true
    fi
    if [ ! -x /usr/bin/chromium ]; then
        echo "error: /usr/bin/chromium is missing; the browser tests need it (Debian: apt-get install chromium)." >&2
        status=1
    fi
fi

# tests/test_compose.py validates compose.yaml with Debian's docker-compose (no Docker engine needed).
if ! command -v docker-compose >/dev/null 2>&1; then
    if command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
        echo "Installing docker-compose for the compose.yaml tests..."
        (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq docker-compose >/dev/null) || true
    fi
    if ! command -v docker-compose >/dev/null 2>&1; then
        echo "error: docker-compose is missing; tests/test_compose.py needs it (Debian: apt-get install docker-compose)." >&2
        status=1
    fi
fi

exit $status
