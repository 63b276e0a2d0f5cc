{{/*
Chart name, or nameOverride; used as the app.kubernetes.io/name label.
*/}}
{{- define "caddy-ingress.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
Full name of the namespaced objects: fullnameOverride, else the release name when it already
contains the chart name, else "<release>-<name>".
*/}}
{{- define "caddy-ingress.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{- define "caddy-ingress.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
Selector labels. They match laconic-so's controller selector when nameOverride is
caddy-ingress-controller and the release is caddy-ingress, so its Deployment can be adopted
(a Deployment's selector cannot change).
*/}}
{{- define "caddy-ingress.selectorLabels" -}}
app.kubernetes.io/name: {{ include "caddy-ingress.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: controller
{{- end }}

{{- define "caddy-ingress.labels" -}}
helm.sh/chart: {{ include "caddy-ingress.chart" . }}
app.kubernetes.io/name: {{ include "caddy-ingress.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end }}

{{- define "caddy-ingress.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "caddy-ingress.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "caddy-ingress.configMapName" -}}
{{- default (printf "%s-configmap" (include "caddy-ingress.fullname" .)) .Values.configMap.name }}
{{- end }}

{{/* Cluster-scoped names default to the release's full name, never to a fixed string. */}}
{{- define "caddy-ingress.clusterRoleName" -}}
{{- default (include "caddy-ingress.fullname" .) .Values.rbac.clusterRoleName }}
{{- end }}

{{- define "caddy-ingress.clusterRoleBindingName" -}}
{{- default (include "caddy-ingress.clusterRoleName" .) .Values.rbac.clusterRoleBindingName }}
{{- end }}

{{- define "caddy-ingress.className" -}}
{{- default (include "caddy-ingress.fullname" .) .Values.ingressClass.name }}
{{- end }}

{{/*
The controller image: by digest when image.digest is set (the tag then names nothing the pod
pulls, so it is not checked), else by tag. Fails on a missing or floating tag: `latest` makes
kubelet pull on every start and ignore an image side-loaded into kind.
*/}}
{{- define "caddy-ingress.image" -}}
{{- $repositories := dict "upstream" "caddy/ingress" "laconic" "ghcr.io/laconicnetwork/caddy-ingress" }}
{{- $repository := default (get $repositories .Values.image.variant) .Values.image.repository }}
{{- if .Values.image.digest }}
{{- printf "%s@%s" $repository .Values.image.digest }}
{{- else }}
{{- $tag := .Values.image.tag }}
{{- if and (not $tag) (eq .Values.image.variant "upstream") }}
{{- $tag = .Chart.AppVersion }}
{{- end }}
{{- if not $tag }}
{{- fail (printf "ERROR: image.tag must be set to a pinned tag of %s when image.variant is %q" $repository .Values.image.variant) }}
{{- end }}
{{- include "caddy-ingress.pinned" (list "image.tag" $tag) }}
{{- printf "%s:%s" $repository $tag }}
{{- end }}
{{- end }}

{{/*
Fails when an image tag floats. Called with (list "<values key>" <tag>).
*/}}
{{- define "caddy-ingress.pinned" -}}
{{- if eq (index . 1) "latest" }}
{{- fail (printf "ERROR: %s must be a pinned tag, not \"latest\"" (index . 0)) }}
{{- end }}
{{- end }}

{{/* True (non-empty) when the controller pod binds host ports. */}}
{{- define "caddy-ingress.hostPorts" -}}
{{- if .Values.kind.enabled }}true{{ end }}
{{- end }}

{{/* Environment shared by the certificate restore and backup containers. */}}
{{- define "caddy-ingress.certBackupEnv" -}}
env:
  - name: BACKUP_FILE
    value: /backup/{{ .Values.certBackup.fileName }}
  - name: SECRET_SELECTOR
    value: {{ .Values.certBackup.selector | quote }}
  - name: INTERVAL_SECONDS
    value: {{ .Values.certBackup.intervalSeconds | quote }}
  # kubectl keeps its discovery cache under $HOME; the root filesystem is read-only.
  - name: HOME
    value: /tmp
  - name: POD_NAMESPACE
    valueFrom:
      fieldRef:
        fieldPath: metadata.namespace
{{- end }}

{{/* True (non-empty) when more than one controller pod runs. */}}
{{- define "caddy-ingress.replicated" -}}
{{- if gt (int .Values.replicaCount) 1 }}true{{ end }}
{{- end }}

{{/* True (non-empty) when the PodDisruptionBudget is rendered: as asked, else with replicas > 1. */}}
{{- define "caddy-ingress.pdbEnabled" -}}
{{- $enabled := .Values.podDisruptionBudget.enabled }}
{{- if kindIs "invalid" $enabled }}
{{- include "caddy-ingress.replicated" . }}
{{- else if $enabled }}true{{ end }}
{{- end }}

{{/* Fails when a Prometheus object is asked for while the controller serves no metrics. */}}
{{- define "caddy-ingress.needsMetrics" -}}
{{- if and (not .Values.metrics) (or .Values.monitoring.podAnnotations .Values.monitoring.serviceMonitor.enabled .Values.monitoring.podMonitor.enabled) }}
{{- fail "ERROR: monitoring.* scrapes /metrics, which the controller serves only with metrics: true" }}
{{- end }}
{{- end }}
