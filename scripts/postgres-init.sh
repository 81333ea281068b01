#!/usr/bin/env bash
# The database's two roles, created once when the postgres container initialises an empty data
# directory (mounted into /docker-entrypoint-initdb.d/ by compose.yaml). docs/operations.md#database-roles.
#
#   owner (SHOP_OWNER, default shop)     owns the database and, after `migrate`, every table: runs
#                                        migrate and outbox_grants, nothing else.
#   app   (SHOP_APP_ROLE, default shop_app) what web, relays and workers connect as: owns nothing,
#                                        has only what `manage.py outbox_grants --role shop_app` grants.
#
# Passwords: SHOP_OWNER_PASSWORD and SHOP_APP_PASSWORD (required). The superuser is the image's
# POSTGRES_USER; nothing of the application connects as it. Outside Docker the same script runs
# against any server as a superuser: PGHOST=... POSTGRES_USER=postgres POSTGRES_DB=postgres bash scripts/postgres-init.sh
set -euo pipefail

: "${SHOP_OWNER_PASSWORD:?set SHOP_OWNER_PASSWORD: the password of the database owner role}"
: "${SHOP_APP_PASSWORD:?set SHOP_APP_PASSWORD: the password of the application role}"

psql --no-psqlrc -v ON_ERROR_STOP=1 --username "${POSTGRES_USER:-postgres}" --dbname "${POSTGRES_DB:-postgres}" \
    -v database="${SHOP_DATABASE:-shop}" -v owner="${SHOP_OWNER:-shop}" -v app="${SHOP_APP_ROLE:-shop_app}" \
    -v owner_password="$SHOP_OWNER_PASSWORD" -v app_password="$SHOP_APP_PASSWORD" <<'SQL'
CREATE ROLE :"owner" LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOREPLICATION NOBYPASSRLS PASSWORD :'owner_password';
CREATE ROLE :"app" LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOREPLICATION NOBYPASSRLS PASSWORD :'app_password';
CREATE DATABASE :"database" OWNER :"owner";
-- Only these two roles may connect; the app's privileges inside come from outbox_grants.
REVOKE ALL ON DATABASE :"database" FROM PUBLIC;
GRANT CONNECT ON DATABASE :"database" TO :"app";
\connect :"database"
-- PostgreSQL 15 already lets nobody but the database owner create in the public schema; said
-- here so that an older server gives the app role no CREATE either.
REVOKE CREATE ON SCHEMA public FROM PUBLIC;
GRANT USAGE ON SCHEMA public TO :"app";
SQL
