#!/bin/sh
# One-shot (compose service `es-setup`): the services' Elasticsearch role and user.
# Runs as `elastic` once Elasticsearch is healthy; idempotent (PUT replaces). Passwords
# reach curl through its config on stdin and a private body file, never a command line.
set -eu
umask 077
ES=http://elasticsearch:9200
BODY=$(mktemp)
trap 'rm -f "$BODY"' EXIT

es() {
  method=$1 path=$2
  printf '%s' "$3" > "$BODY"
  printf 'user = "elastic:%s"\n' "$(cat /run/secrets/elastic_password)" |
    curl -fsS -K - -X "$method" "$ES$path" -H 'content-type: application/json' \
      --data-binary "@$BODY" > /dev/null
}

# `all` on the services' aliases and indices (prefix OUTBOX_ES_INDEX_PREFIX, `outbox-`):
# create, alias swaps, bulk, search, PIT, reindex; `monitor` for info and cluster health.
es PUT /_security/role/outbox \
  '{"cluster":["monitor"],"indices":[{"names":["outbox-*"],"privileges":["all"]}]}'
es PUT /_security/user/outbox \
  "{\"password\":\"$(cat /run/secrets/es_outbox_password)\",\"roles\":[\"outbox\"]}"
echo "es-setup: role and user 'outbox' ready"
