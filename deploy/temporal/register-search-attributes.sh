#!/bin/sh
# Register Progression's custom search attributes on a Temporal namespace. Idempotent: an
# attribute that exists with the right type is left alone; one with another type is an error.
# Runs as a one-shot compose service (temporalio/admin-tools image), and in the test suite
# against the dev server with the venv's `temporal` CLI. POSIX sh: the images differ.
#
#   TEMPORAL_ADDRESS    host:port of the frontend (required)
#   TEMPORAL_NAMESPACE  namespace (default: default)
#   SEARCH_ATTRIBUTES   space-separated Name=Type pairs (required; engine.lifecycle.SEARCH_ATTRIBUTES)
#   TEMPORAL_CLI        the temporal CLI binary (default: temporal)
#   WAIT_SECONDS        how long to wait for the namespace to be served (default: 180)
set -eu

: "${TEMPORAL_ADDRESS:?TEMPORAL_ADDRESS must name the Temporal frontend, e.g. temporal:7233}"
: "${SEARCH_ATTRIBUTES:?SEARCH_ATTRIBUTES must list Name=Type pairs}"
NAMESPACE="${TEMPORAL_NAMESPACE:-default}"
CLI="${TEMPORAL_CLI:-temporal}"
WAIT_SECONDS="${WAIT_SECONDS:-180}"

list_attributes() {
    "$CLI" operator search-attribute list --address "$TEMPORAL_ADDRESS" --namespace "$NAMESPACE"
}

# The server answers before auto-setup has created the namespace: wait for the namespace itself.
waited=0
until existing=$(list_attributes 2>/dev/null); do
    waited=$((waited + 1))
    if [ "$waited" -ge "$WAIT_SECONDS" ]; then
        echo "namespace '$NAMESPACE' on $TEMPORAL_ADDRESS not served after ${WAIT_SECONDS}s" >&2
        exit 1
    fi
    echo "waiting for namespace '$NAMESPACE' on $TEMPORAL_ADDRESS"
    sleep 1
done

for pair in $SEARCH_ATTRIBUTES; do
    name="${pair%%=*}"
    type="${pair#*=}"
    current=$(printf '%s\n' "$existing" | awk -v n="$name" '$1 == n { print $2 }')
    if [ -z "$current" ]; then
        "$CLI" operator search-attribute create --address "$TEMPORAL_ADDRESS" --namespace "$NAMESPACE" \
            --name "$name" --type "$type"
        echo "registered $name ($type)"
    elif [ "$current" = "$type" ]; then
        echo "already registered: $name ($type)"
    else
        echo "search attribute $name exists as $current, expected $type" >&2
        exit 1
    fi
done

# Visibility picks new attributes up asynchronously: finish only when all of them are listed.
waited=0
while :; do
    existing=$(list_attributes)
    missing=""
    for pair in $SEARCH_ATTRIBUTES; do
        name="${pair%%=*}"
        printf '%s\n' "$existing" | awk -v n="$name" '$1 == n { found = 1 } END { exit !found }' \
            || missing="$missing $name"
    done
    [ -z "$missing" ] && break
    waited=$((waited + 1))
    if [ "$waited" -ge "$WAIT_SECONDS" ]; then
        echo "search attributes not visible after ${WAIT_SECONDS}s:$missing" >&2
        exit 1
    fi
    sleep 1
done
echo "search attributes ready on namespace '$NAMESPACE'"
