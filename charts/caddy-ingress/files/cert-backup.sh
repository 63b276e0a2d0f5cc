#!/bin/sh
# Copies the controller's certificate Secrets to the host directory every INTERVAL_SECONDS.
# The file is written to a temporary name and renamed, so a crash never leaves half a backup,
# and an unreadable listing (API down) keeps the previous backup.
set -u

while true; do
  if kubectl get secrets --namespace "$POD_NAMESPACE" -l "$SECRET_SELECTOR" -o yaml \
    >"$BACKUP_FILE.tmp"; then
    mv "$BACKUP_FILE.tmp" "$BACKUP_FILE"
    echo "backed up $(grep -c '^- apiVersion:' "$BACKUP_FILE") certificate Secret(s) to $BACKUP_FILE"
  else
    rm -f "$BACKUP_FILE.tmp"
    echo "listing certificate Secrets failed; kept the previous backup" >&2
  fi
  sleep "$INTERVAL_SECONDS"
done
