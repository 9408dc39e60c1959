#!/bin/sh
# Makes the secret files docker-compose.yml mounts (compose secrets), once:
# random hex values (safe in URLs and config files), mode 600, in
# ${FLASHGRAB_SECRETS_DIR:-deploy/secrets}/. Existing files are kept, so a
# second run changes nothing. The folder is in .gitignore.
set -eu
dir="${FLASHGRAB_SECRETS_DIR:-$(dirname "$0")/secrets}"
mkdir -p "$dir"
chmod 700 "$dir"
for name in redis_password amqp_password mysql_password mysql_root_password admin_token user_jwt_secret; do
  [ -s "$dir/$name" ] && continue
  # 32 random bytes as hex: 64 characters, above every minimum (admin token 16, JWT secret 32).
  (umask 077 && openssl rand -hex 32 | tr -d '\n' >"$dir/$name")
  echo "made $dir/$name"
done
