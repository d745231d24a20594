#!/usr/bin/env bash
# Least-privilege RabbitMQ permissions for Glowline (docs/security.md).
#
# The users must exist (`rabbitmqctl add_user NAME PASSWORD`, with the
# password from your secret store); this sets what each may do on the
# virtual host. worker/tests/least_privilege.rs runs the scheduler, a worker
# and glowctl under exactly these permissions.
#
#   GLOWLINE_VHOST=glowline deploy/rabbitmq/least-privilege.sh
#
# Names of the users: GLOWLINE_SCHEDULER_USER, GLOWLINE_WORKER_USER and
# GLOWLINE_CLIENT_USER (default glowline-scheduler, glowline-worker,
# glowline-client).
set -euo pipefail

vhost="${GLOWLINE_VHOST:-glowline}"
scheduler="${GLOWLINE_SCHEDULER_USER:-glowline-scheduler}"
worker="${GLOWLINE_WORKER_USER:-glowline-worker}"
client="${GLOWLINE_CLIENT_USER:-glowline-client}"

# Regular expressions on resource names: configure, write, read.
# Both services declare the whole topology on start (idempotently), which
# needs configure on every name and, for each binding, write on the queue
# and read on the exchange.
#
# The scheduler consumes submissions, publishes dispatches and events
# (glowline.jobs, glowline.events) and answers submitters through the
# default exchange (amq.default, direct reply-to).
rabbitmqctl -q set_permissions -p "$vhost" "$scheduler" \
    '^glowline\..*' '^(glowline\..*|amq\.default)$' '^glowline\..*'
# A worker only consumes its work queues; it publishes nothing. Its write
# names are the queues it binds (the dead-letter queue shares its
# exchange's name, so a worker may publish there, and only there).
rabbitmqctl -q set_permissions -p "$vhost" "$worker" \
    '^glowline\..*' '^glowline\.(submit|dead|work\..*)$' '^glowline\.(jobs|dead|work\..*)$'
# glowctl publishes submissions on glowline.jobs and reads its replies
# through direct reply-to, which needs no grant; it declares nothing.
rabbitmqctl -q set_permissions -p "$vhost" "$client" \
    '^$' '^glowline\.jobs$' '^$'
