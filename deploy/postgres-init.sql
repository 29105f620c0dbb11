-- Run once by the postgres image, on its first start with an empty data volume
-- (/docker-entrypoint-initdb.d/): the Dagster instance's database and the shared warehouse.
-- Idempotent, so it also works when POSTGRES_DB already names one of them.
SELECT 'CREATE DATABASE dagster' WHERE NOT EXISTS (SELECT FROM pg_database WHERE datname = 'dagster')\gexec
SELECT 'CREATE DATABASE warehouse' WHERE NOT EXISTS (SELECT FROM pg_database WHERE datname = 'warehouse')\gexec
