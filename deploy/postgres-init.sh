#!/bin/sh
# Run by the postgres image on its first start with an empty data volume (/docker-entrypoint-initdb.d/), as
# the superuser POSTGRES_USER: the pipeline's two roles (dc_pipeline_writer, which owns the dagster and
# warehouse databases; dc_pipeline_reader, which may only read warehouse) and both databases, from the same
# script `dc-pipeline cluster up` runs (dc_pipeline/ops/postgres_roles.sql, mounted read-only). Idempotent: on
# a volume made before the roles, run it once by hand to upgrade in place (see deploy/README.md).
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
