#!/bin/sh
# Restores the controller's certificate Secrets from the host backup before Caddy starts.
# Only Secrets that are missing are created: a Secret already in the cluster may be newer than
# the backup (renewed since), so it is never overwritten. A missing backup is a first start.
# The file may be this chart's backup or laconic-so's (`kubectl get secret -o yaml`): server-set
# metadata is stripped so the objects can be created again, in this namespace.
set -eu

if [ ! -s "$BACKUP_FILE" ]; then
  echo "no certificate backup at $BACKUP_FILE; nothing to restore"
  exit 0
fi

clean=/tmp/restore.yaml
sed -E '/^ {2,4}(resourceVersion|uid|creationTimestamp|selfLink|generation|namespace):/d' \
  "$BACKUP_FILE" >"$clean"
if ! grep -q 'kind: Secret' "$clean"; then
  echo "the backup at $BACKUP_FILE holds no Secrets; nothing to restore"
  exit 0
fi

if kubectl create --namespace "$POD_NAMESPACE" -f "$clean" >/tmp/out 2>/tmp/err; then
  cat /tmp/out
elif grep -qv 'already exists' /tmp/err; then
  cat /tmp/out /tmp/err >&2
  echo "restoring $BACKUP_FILE failed; fix or remove the file to start without it" >&2
  exit 1
else
  cat /tmp/out
  echo "the other certificate Secrets already exist; kept them"
fi
