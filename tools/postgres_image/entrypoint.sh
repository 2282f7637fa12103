#!/bin/sh
# Start PostgreSQL on the data folder, first creating the cluster (user, password, database) when
# the folder is empty. The password is read from POSTGRES_PASSWORD_FILE, never from a variable.
set -eu
data=/var/lib/postgresql/data
bin=$(echo /usr/lib/postgresql/*/bin)
user=${POSTGRES_USER:-postgres}
database=${POSTGRES_DB:-$user}
as_postgres() { runuser -u postgres -- "$@"; }

mkdir -p "$data" /var/run/postgresql
chown postgres:postgres "$data" /var/run/postgresql
chmod 700 "$data"
if [ ! -s "$data/PG_VERSION" ]; then
    [ -r "${POSTGRES_PASSWORD_FILE:-}" ] || { echo "error: set POSTGRES_PASSWORD_FILE to a readable file holding the password" >&2; exit 2; }
    copy=$(mktemp)  # the server's user may not read the secret's own file
    cp "$POSTGRES_PASSWORD_FILE" "$copy" && chown postgres "$copy"
    as_postgres "$bin/initdb" -D "$data" -U "$user" --pwfile="$copy" --auth-local=trust --auth-host=scram-sha-256 >/dev/null
    rm -f "$copy"
    echo "host all all all scram-sha-256" >> "$data/pg_hba.conf"
    if [ "$database" != postgres ]; then
        as_postgres "$bin/pg_ctl" -D "$data" -o "-c listen_addresses=" -w start >/dev/null
        as_postgres "$bin/createdb" -U "$user" "$database"
        as_postgres "$bin/pg_ctl" -D "$data" -m fast -w stop >/dev/null
    fi
fi
exec setpriv --reuid=postgres --regid=postgres --init-groups "$bin/postgres" -D "$data" -c listen_addresses='*'
