#!/usr/bin/env bash
# Makes sure every service the job system's tests talk to is up on loopback:
# Postgres and RabbitMQ (started by the machine; started here if they
# stopped), RabbitMQ's feature flags (quorum queues need them), and the S3
# server (scripts/s3.sh). Idempotent; safe to run before every test run.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

wait_port() {
    local name=$1 port=$2
    for _ in $(seq 1 60); do
        port_open "$port" && return 0
        sleep 0.5
    done
    echo "services: $name is not listening on 127.0.0.1:$port" >&2
    return 1
}

if ! port_open 5432; then
    echo "services: starting Postgres"
    pg_ctlcluster --skip-systemctl-redirect "$(ls /etc/postgresql | head -n1)" main start
fi
wait_port Postgres 5432

if ! port_open 5672; then
    echo "services: starting RabbitMQ"
    rabbitmq-server -detached
fi
wait_port RabbitMQ 5672
rabbitmqctl -q await_startup >/dev/null
rabbitmqctl -q enable_feature_flag all >/dev/null

scripts/s3.sh
