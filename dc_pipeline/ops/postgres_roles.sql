-- The pipeline's PostgreSQL roles: dc_pipeline_writer owns the dagster and warehouse databases and everything
-- in them (every pipeline process logs in as it); dc_pipeline_reader may connect to warehouse and SELECT there,
-- nothing else (the API, the scoring service, notebooks). Run by psql as a superuser with the variables
-- writer_password and reader_password set; idempotent, so it also upgrades a database made before the roles:
-- what the superuser running it owns there is handed to the writer. Used by `dc-pipeline cluster up` and by
-- deploy/postgres-init.sh.
\set ON_ERROR_STOP on
SELECT 'CREATE ROLE dc_pipeline_writer' WHERE NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'dc_pipeline_writer')
\gexec
SELECT 'CREATE ROLE dc_pipeline_reader' WHERE NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'dc_pipeline_reader')
\gexec
ALTER ROLE dc_pipeline_writer LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE PASSWORD :'writer_password';
ALTER ROLE dc_pipeline_reader LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE PASSWORD :'reader_password';
SELECT format('CREATE DATABASE %I OWNER dc_pipeline_writer', d) FROM unnest(ARRAY['dagster', 'warehouse']) d
  WHERE NOT EXISTS (SELECT FROM pg_database WHERE datname = d)
\gexec
ALTER DATABASE dagster OWNER TO dc_pipeline_writer;
ALTER DATABASE warehouse OWNER TO dc_pipeline_writer;
REVOKE ALL ON DATABASE dagster FROM PUBLIC;
REVOKE ALL ON DATABASE warehouse FROM PUBLIC;
GRANT CONNECT ON DATABASE warehouse TO dc_pipeline_reader;

-- In each database, what the superuser running this owns goes to the writer (REASSIGN OWNED is refused for
-- the bootstrap superuser). Tables take their indexes and their columns' sequences along; the sequences left
-- are handed over after them. The same block for both databases.
\connect dagster
DO $$ DECLARE r record; BEGIN
  FOR r IN SELECT nspname FROM pg_namespace WHERE nspowner = (SELECT oid FROM pg_roles WHERE rolname = current_user)
      AND nspname NOT LIKE 'pg\_%' AND nspname <> 'information_schema' LOOP
    EXECUTE format('ALTER SCHEMA %I OWNER TO dc_pipeline_writer', r.nspname);
  END LOOP;
  FOR r IN SELECT c.oid::regclass AS name, c.relkind FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
      WHERE c.relowner = (SELECT oid FROM pg_roles WHERE rolname = current_user) AND c.relkind IN ('r', 'p', 'v', 'm', 'f')
      AND n.nspname NOT LIKE 'pg\_%' AND n.nspname <> 'information_schema' LOOP
    EXECUTE format('ALTER %s %s OWNER TO dc_pipeline_writer', CASE r.relkind WHEN 'v' THEN 'VIEW'
      WHEN 'm' THEN 'MATERIALIZED VIEW' WHEN 'f' THEN 'FOREIGN TABLE' ELSE 'TABLE' END, r.name);
  END LOOP;
  FOR r IN SELECT c.oid::regclass AS name FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
      WHERE c.relowner = (SELECT oid FROM pg_roles WHERE rolname = current_user) AND c.relkind = 'S'
      AND n.nspname NOT LIKE 'pg\_%' AND n.nspname <> 'information_schema' LOOP
    EXECUTE format('ALTER SEQUENCE %s OWNER TO dc_pipeline_writer', r.name);
  END LOOP;
END $$;
\connect warehouse
DO $$ DECLARE r record; BEGIN
  FOR r IN SELECT nspname FROM pg_namespace WHERE nspowner = (SELECT oid FROM pg_roles WHERE rolname = current_user)
      AND nspname NOT LIKE 'pg\_%' AND nspname <> 'information_schema' LOOP
    EXECUTE format('ALTER SCHEMA %I OWNER TO dc_pipeline_writer', r.nspname);
  END LOOP;
  FOR r IN SELECT c.oid::regclass AS name, c.relkind FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
      WHERE c.relowner = (SELECT oid FROM pg_roles WHERE rolname = current_user) AND c.relkind IN ('r', 'p', 'v', 'm', 'f')
      AND n.nspname NOT LIKE 'pg\_%' AND n.nspname <> 'information_schema' LOOP
    EXECUTE format('ALTER %s %s OWNER TO dc_pipeline_writer', CASE r.relkind WHEN 'v' THEN 'VIEW'
      WHEN 'm' THEN 'MATERIALIZED VIEW' WHEN 'f' THEN 'FOREIGN TABLE' ELSE 'TABLE' END, r.name);
  END LOOP;
  FOR r IN SELECT c.oid::regclass AS name FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
      WHERE c.relowner = (SELECT oid FROM pg_roles WHERE rolname = current_user) AND c.relkind = 'S'
      AND n.nspname NOT LIKE 'pg\_%' AND n.nspname <> 'information_schema' LOOP
    EXECUTE format('ALTER SEQUENCE %s OWNER TO dc_pipeline_writer', r.name);
  END LOOP;
END $$;

-- The reader: USAGE on the schemas and SELECT on the tables and views, now and as the writer adds them.
DO $$ DECLARE r record; BEGIN
  FOR r IN SELECT nspname FROM pg_namespace WHERE nspname NOT LIKE 'pg\_%' AND nspname <> 'information_schema' LOOP
    EXECUTE format('GRANT USAGE ON SCHEMA %I TO dc_pipeline_reader', r.nspname);
    EXECUTE format('GRANT SELECT ON ALL TABLES IN SCHEMA %I TO dc_pipeline_reader', r.nspname);
  END LOOP;
END $$;
ALTER DEFAULT PRIVILEGES FOR ROLE dc_pipeline_writer GRANT USAGE ON SCHEMAS TO dc_pipeline_reader;
ALTER DEFAULT PRIVILEGES FOR ROLE dc_pipeline_writer GRANT SELECT ON TABLES TO dc_pipeline_reader;
