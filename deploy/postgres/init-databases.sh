#!/bin/sh
# First start of the PostgreSQL volume only (docker-entrypoint-initdb.d): one server, two owners.
#   temporal     owns `temporal` and `temporal_visibility` (Temporal's persistence and visibility)
#   progression  owns `progression` (the application database; migrations run as this role)
# Neither is a superuser. Passwords come from the environment, never from this file, and are
# passed to psql as variables so no quoting can break out of the SQL.
set -eu
: "${TEMPORAL_DB_PASSWORD:?TEMPORAL_DB_PASSWORD is required}"
: "${PROGRESSION_DB_PASSWORD:?PROGRESSION_DB_PASSWORD is required}"

psql -v ON_ERROR_STOP=1 --username "$POSTGRES_USER" --dbname "${POSTGRES_DB:-$POSTGRES_USER}" \
     -v temporal_pw="$TEMPORAL_DB_PASSWORD" -v progression_pw="$PROGRESSION_DB_PASSWORD" <<'SQL'
CREATE ROLE temporal LOGIN PASSWORD :'temporal_pw';
CREATE DATABASE temporal OWNER temporal;
CREATE DATABASE temporal_visibility OWNER temporal;
CREATE ROLE progression LOGIN PASSWORD :'progression_pw';
CREATE DATABASE progression OWNER progression;
REVOKE ALL ON DATABASE temporal, temporal_visibility, progression FROM PUBLIC;
SQL
