#!/usr/bin/env bash
# Generates one gateway's plugin token and session key, once: DIR/plugin-token (32 random bytes,
# base64url without padding: what the sidecar itself would generate) and DIR/session-key (32
# random bytes, standard base64), mode 0600. Existing files are kept (rotate by deleting them).
# DIR defaults to wasmplugin/config/secrets. Never commit them (.gitignore covers secrets/).
set -euo pipefail
dir="${1:-$(dirname "$0")/config/secrets}"
mkdir -p "$dir"
chmod 700 "$dir"
umask 077
if [ ! -s "$dir/plugin-token" ]; then
  head -c 32 /dev/urandom | base64 -w0 | tr '+/' '-_' | tr -d '=' > "$dir/plugin-token"
  echo "generated $dir/plugin-token"
fi
if [ ! -s "$dir/session-key" ]; then
  head -c 32 /dev/urandom | base64 -w0 > "$dir/session-key"
  echo "generated $dir/session-key"
fi
