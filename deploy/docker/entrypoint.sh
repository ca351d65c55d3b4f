#!/bin/sh
# Entry point of the hftgate image: puts passwords kept in files (compose or Kubernetes secrets)
# into the connection URLs the services read, then runs the command (python -m services.<name>).
#
#   REDIS_PASSWORD_FILE     REDIS_URL=redis://host:port/db        -> redis://:<password>@host:port/db
#   DATABASE_PASSWORD_FILE  DATABASE_URL and HFTGATE_EXECUTION_LEDGER_DATABASE_URL,
#                           scheme://user@host/db                 -> scheme://user:<password>@host/db
#
# Passwords must be URL-safe (letters, digits, - . _ ~), as `openssl rand -hex 32` makes them.
set -eu

read_password() {  # $1: file
  password=$(cat "$1")
  case "$password" in
    "" | *[!A-Za-z0-9._~-]*)
      echo "entrypoint: $1 must hold a non-empty URL-safe password (letters, digits, - . _ ~)" >&2
      exit 64 ;;
  esac
  printf '%s' "$password"
}

if [ -n "${REDIS_PASSWORD_FILE:-}" ] && [ -n "${REDIS_URL:-}" ]; then
  password=$(read_password "$REDIS_PASSWORD_FILE")
  REDIS_URL="redis://:${password}@${REDIS_URL#redis://}"
  export REDIS_URL
fi

if [ -n "${DATABASE_PASSWORD_FILE:-}" ]; then
  password=$(read_password "$DATABASE_PASSWORD_FILE")
  for name in DATABASE_URL HFTGATE_EXECUTION_LEDGER_DATABASE_URL; do
    eval "url=\${$name:-}"
    case "$url" in
      *://*@*) eval "$name=\"\${url%%@*}:${password}@\${url#*@}\""; export "$name" ;;
    esac
  done
fi

exec "$@"
