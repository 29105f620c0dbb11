#!/bin/sh
# The pipeline's two roles (dc_pipeline_writer, which owns the dagster and warehouse databases;
# dc_pipeline_reader, which may only read warehouse) and both databases, from the same script
# `dc-pipeline cluster up` runs (dc_pipeline/ops/postgres_roles.sql), as the superuser POSTGRES_USER. The
# compose file's one-shot `postgres-roles` service runs it on every `up` against the `postgres` service
# (PGHOST, PGPASSWORD); psql takes the server from libpq's variables, so it runs anywhere psql reaches the
# server. Idempotent: it also upgrades a volume made before the roles in place and sets the passwords again.
# The passwords go to psql on stdin, not in its arguments.
set -eu
: "${DC_PG_WRITER_PASSWORD:?set in deploy/cluster.env}" "${DC_PG_READER_PASSWORD:?set in deploy/cluster.env}"
case "$DC_PG_WRITER_PASSWORD$DC_PG_READER_PASSWORD" in
  *"'"*|*"\\"*) echo "postgres-init.sh: the role passwords may not contain ' or \\" >&2; exit 1 ;;
esac
psql -X -q -U "$POSTGRES_USER" -d postgres <<SQL
\set writer_password '$DC_PG_WRITER_PASSWORD'
\set reader_password '$DC_PG_READER_PASSWORD'
\i '${DC_PG_ROLES_SQL:-/opt/dc-pipeline/postgres_roles.sql}'
SQL
