{{/*
Chart name, or nameOverride; used as the app.kubernetes.io/name label.
*/}}
{{- define "agave.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
Full name: fullnameOverride, else the release name when it already contains the chart name,
else "<release>-<name>".
*/}}
{{- define "agave.fullname" -}}
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

{{- define "agave.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "agave.selectorLabels" -}}
app.kubernetes.io/name: {{ include "agave.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: node
{{- end }}

{{- define "agave.labels" -}}
helm.sh/chart: {{ include "agave.chart" . }}
app.kubernetes.io/name: {{ include "agave.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end }}

{{/*
Fails when an image tag floats. Called with (list "<values key>" <tag>).
*/}}
{{- define "agave.pinned" -}}
{{- if eq (index . 1) "latest" }}
{{- fail (printf "ERROR: %s must be a pinned tag, not \"latest\"" (index . 0)) }}
{{- end }}
{{- end }}

{{/*
The node image: by digest when image.digest is set (the tag then names nothing the pod pulls, so
it is not checked), else by its pinned tag.
*/}}
{{- define "agave.image" -}}
{{- if .Values.image.digest }}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest }}
{{- else }}
{{- $tag := default .Chart.AppVersion .Values.image.tag }}
{{- include "agave.pinned" (list "image.tag" $tag) }}
{{- printf "%s:%s" .Values.image.repository $tag }}
{{- end }}
{{- end }}

{{/* True (non-empty) in the modes that run agave-validator. */}}
{{- define "agave.realNode" -}}
{{- if ne .Values.mode "test" }}true{{ end }}
{{- end }}

{{/* The volumes the mode uses, as a JSON list: a test validator keeps accounts and snapshots in its ledger. */}}
{{- define "agave.volumeNames" -}}
{{- if include "agave.realNode" . }}
{{- list "ledger" "accounts" "snapshots" "log" "config" | toJson }}
{{- else }}
{{- list "ledger" "log" "config" | toJson }}
{{- end }}
{{- end }}

{{- define "agave.pvcName" -}}
{{- printf "%s-%s" (include "agave.fullname" .root) .name }}
{{- end }}

{{/* Name of the Secret holding a keypair, or nothing. Called with (dict "root" $ "key" "identity"). */}}
{{- define "agave.keySecretName" -}}
{{- $key := get .root.Values .key }}
{{- if $key.existingSecret }}
{{- $key.existingSecret }}
{{- else if $key.keypair }}
{{- printf "%s-%s" (include "agave.fullname" .root) .key }}
{{- end }}
{{- end }}

{{/*
The dynamic port range as a list [start, end), after checking it: agave refuses a range
narrower than 26 ports, and the chart says so before the pod crash-loops.
*/}}
{{- define "agave.portRange" -}}
{{- $range := .Values.ports.dynamicPortRange }}
{{- $parts := splitList "-" $range }}
{{- $start := int (index $parts 0) }}
{{- $end := int (index $parts 1) }}
{{- $width := sub $end $start }}
{{- if lt $width 26 }}
{{- fail (printf "ERROR: ports.dynamicPortRange %q is %d ports wide; agave needs at least 26 (the end is exclusive: e.g. \"%d-%d\")" $range $width $start (add $start 26)) }}
{{- end }}
{{- if gt $end 65535 }}
{{- fail (printf "ERROR: ports.dynamicPortRange %q ends beyond port 65535" $range) }}
{{- end }}
{{- list $start $end | toJson }}
{{- end }}

{{/*
Renders a flag map as container arguments, one JSON list of strings, keys in sorted order so
the same values always give the same pod template: true -> "--k"; false -> nothing;
list -> "--k" "v" per item; other -> "--k" "v". Whole numbers print without an exponent.
*/}}
{{- define "agave.flagArgs" -}}
{{- $args := list }}
{{- range $key, $value := . }}
{{- if kindIs "bool" $value }}
{{- if $value }}
{{- $args = append $args (printf "--%s" $key) }}
{{- end }}
{{- else if kindIs "slice" $value }}
{{- range $value }}
{{- $args = append $args (printf "--%s" $key) }}
{{- $args = append $args (include "agave.scalar" .) }}
{{- end }}
{{- else if not (kindIs "invalid" $value) }}
{{- $args = append $args (printf "--%s" $key) }}
{{- $args = append $args (include "agave.scalar" $value) }}
{{- end }}
{{- end }}
{{- $args | toJson }}
{{- end }}

{{- define "agave.scalar" -}}
{{- if and (kindIs "float64" .) (eq (float64 (int64 .)) .) }}
{{- int64 . }}
{{- else }}
{{- toString . }}
{{- end }}
{{- end }}

{{/*
The program flags: what the chart sets for the mode, then the operator's `flags` on top.
*/}}
{{- define "agave.flags" -}}
{{- $range := include "agave.portRange" . | fromJsonArray }}
{{- $base := dict
  "ledger" "/data/ledger"
  "rpc-port" (int .Values.ports.rpc)
  "gossip-port" (int .Values.ports.gossip)
  "dynamic-port-range" (printf "%d-%d" (index $range 0 | int) (index $range 1 | int))
  "bind-address" "0.0.0.0" }}
{{- if include "agave.realNode" . }}
{{- $_ := set $base "accounts" "/data/accounts" }}
{{- $_ := set $base "snapshots" "/data/snapshots" }}
{{- $_ := set $base "rpc-bind-address" "0.0.0.0" }}
{{- $_ := set $base "log" "-" }}
{{- if include "agave.keySecretName" (dict "root" . "key" "identity") }}
{{- $_ := set $base "identity" "/keys/identity/identity.json" }}
{{- end }}
{{- if eq .Values.mode "validator" }}
{{- $_ := set $base "vote-account" "/keys/vote/vote-account.json" }}
{{- else }}
{{- $_ := set $base "no-voting" true }}
{{- end }}
{{- /* agave 4.2 turns XDP on by default and will not start without its capabilities. */}}
{{- if not .Values.xdp }}
{{- $_ := set $base "no-xdp" true }}
{{- end }}
{{- else }}
{{- /* solana-test-validator binds 127.0.0.1 by default since 2.3, and since 4.0 it advertises
the address it binds, which must then be a real one (0.0.0.0 makes it panic): the pod's IP,
which Kubernetes puts in for $(POD_IP). Its RPC listens on every address all the same.
--log streams to stdout. */}}
{{- $_ := set $base "bind-address" "$(POD_IP)" }}
{{- $_ := set $base "log" true }}
{{- end }}
{{- /* Set one by one: sprig's merge would let a default replace an operator's `false`. */}}
{{- range $key, $value := .Values.flags }}
{{- $_ := set $base $key $value }}
{{- end }}
{{- $base | toJson }}
{{- end }}

{{- define "agave.program" -}}
{{- if include "agave.realNode" . }}agave-validator{{ else }}solana-test-validator{{ end }}
{{- end }}

{{/*
Render-time checks of combinations the schema cannot express; each names the values to fix.
*/}}
{{- define "agave.checks" -}}
{{- $real := include "agave.realNode" . }}
{{- if and $real (lt (int .Values.terminationGracePeriodSeconds) 300) }}
{{- fail (printf "ERROR: terminationGracePeriodSeconds is %d but must be at least 300 in %s mode (agave needs minutes to exit cleanly)" (int .Values.terminationGracePeriodSeconds) .Values.mode) }}
{{- end }}
{{- range $key := list "identity" "vote" }}
{{- $k := get $.Values $key }}
{{- if and $k.existingSecret $k.keypair }}
{{- fail (printf "ERROR: set either %s.existingSecret or %s.keypair, not both" $key $key) }}
{{- end }}
{{- end }}
{{- if and $real (not (include "agave.keySecretName" (dict "root" . "key" "identity"))) }}
{{- fail (printf "ERROR: %s mode needs an identity keypair: set identity.existingSecret (a Secret with key %q) or identity.keypair" .Values.mode .Values.identity.secretKey) }}
{{- end }}
{{- if and (eq .Values.mode "validator") (not (include "agave.keySecretName" (dict "root" . "key" "vote"))) }}
{{- fail (printf "ERROR: validator mode needs a vote account keypair: set vote.existingSecret (a Secret with key %q) or vote.keypair" .Values.vote.secretKey) }}
{{- end }}
{{- if and .Values.hostNetwork .Values.hostPorts }}
{{- fail "ERROR: set either hostNetwork or hostPorts, not both (with hostNetwork every port is already the node's)" }}
{{- end }}
{{- $range := include "agave.portRange" . | fromJsonArray }}
{{- $start := index $range 0 | int }}
{{- $end := index $range 1 | int }}
{{- range $name, $port := dict "ports.rpc" (int .Values.ports.rpc) "ports.rpc + 1 (WebSocket)" (add .Values.ports.rpc 1 | int) "ports.gossip" (int .Values.ports.gossip) }}
{{- if and (ge $port $start) (lt $port $end) }}
{{- fail (printf "ERROR: %s (%d) lies inside ports.dynamicPortRange %q; agave binds every port of that range" $name $port $.Values.ports.dynamicPortRange) }}
{{- end }}
{{- end }}
{{- if .Values.ingress.enabled }}
{{- if not .Values.ingress.rpc.hosts }}
{{- fail "ERROR: ingress.enabled needs at least one host in ingress.rpc.hosts" }}
{{- end }}
{{- if and (not .Values.ingress.ws.hosts) (eq (include "agave.wsPath" .) .Values.ingress.rpc.path) }}
{{- fail (printf "ERROR: the WebSocket needs its own route: give ingress.ws.hosts, or an ingress.ws.path other than %q" .Values.ingress.rpc.path) }}
{{- end }}
{{- end }}
{{- if and .Values.metrics.existingSecret .Values.metrics.config }}
{{- fail "ERROR: set either metrics.existingSecret or metrics.config, not both" }}
{{- end }}
{{- range .Values.env }}
{{- if and (eq (toString .name) "SOLANA_METRICS_CONFIG") (not .valueFrom) }}
{{- fail "ERROR: SOLANA_METRICS_CONFIG carries the metrics password and must not be a plain value in env: put it in a Secret and set metrics.existingSecret (and metrics.secretKey)" }}
{{- end }}
{{- end }}
{{- include "agave.pinned" (list "sysctlInit.image.tag" .Values.sysctlInit.image.tag) }}
{{- include "agave.pinned" (list "tests.image.tag" .Values.tests.image.tag) }}
{{- end }}

{{/* Path of the WebSocket route: its own hosts get "/", shared hosts "/ws", unless set. */}}
{{- define "agave.wsPath" -}}
{{- if .Values.ingress.ws.path }}
{{- .Values.ingress.ws.path }}
{{- else if .Values.ingress.ws.hosts }}/
{{- else }}/ws
{{- end }}
{{- end }}

{{/*
True (non-empty) when the node runs as root: nodeUser.root "auto" picks root in rpc and validator
modes (the capabilities the chart adds are effective for root only: containerd gives a non-root
process no ambient capabilities) and wherever a hostPath volume is used (the kubelet creates
those folders root-owned and fsGroup does not apply to them); "always" and "never" decide alone.
*/}}
{{- define "agave.runsAsRoot" -}}
{{- $root := .Values.nodeUser.root }}
{{- if eq $root "always" }}true
{{- else if eq $root "auto" }}
{{- $hostPath := false }}
{{- range $name := include "agave.volumeNames" . | fromJsonArray }}
{{- if eq (get $.Values.volumes $name).type "hostPath" }}{{ $hostPath = true }}{{ end }}
{{- end }}
{{- if or (include "agave.realNode" .) $hostPath }}true{{ end }}
{{- end }}
{{- end }}

{{/*
The node pod's security context as JSON: the user nodeUser picks, `podSecurityContext` on top
(its keys win; a runAsUser there replaces nodeUser's user, group and fsGroup), runAsNonRoot following the resulting uid unless given, seccomp RuntimeDefault for
every container that does not set its own.
*/}}
{{- define "agave.podSecurityContext" -}}
{{- $context := dict }}
{{- if include "agave.runsAsRoot" . }}
{{- $context = dict "runAsUser" 0 "runAsGroup" 0 }}
{{- else }}
{{- $uid := int .Values.nodeUser.uid }}
{{- $gid := int .Values.nodeUser.gid }}
{{- $context = dict "runAsUser" $uid "runAsGroup" $gid "fsGroup" $gid "fsGroupChangePolicy" "OnRootMismatch" }}
{{- end }}
{{- if hasKey .Values.podSecurityContext "runAsUser" }}
{{- /* A user given here replaces nodeUser's whole: its group comes from the image unless given. */}}
{{- $context = dict }}
{{- end }}
{{- range $key, $value := .Values.podSecurityContext }}
{{- if kindIs "invalid" $value }}
{{- $_ := unset $context $key }}
{{- else }}
{{- $_ := set $context $key $value }}
{{- end }}
{{- end }}
{{- if not (hasKey .Values.podSecurityContext "runAsNonRoot") }}
{{- $_ := set $context "runAsNonRoot" (ne (int (get $context "runAsUser")) 0) }}
{{- end }}
{{- $_ := set $context "seccompProfile" (dict "type" "RuntimeDefault") }}
{{- $context | toJson }}
{{- end }}

{{/* Seccomp profile type of the node container: seccompProfile, else Unconfined (agave 4 needs
io_uring in every mode, and runtimes' default profiles block it). */}}
{{- define "agave.nodeSeccomp" -}}
{{- .Values.seccompProfile | default "Unconfined" }}
{{- end }}

{{/*
Security context of a container that needs nothing: Pod Security `restricted` for the given
uid/gid. Called with (list uid gid); rendered as YAML at the caller's indentation.
*/}}
{{- define "agave.restrictedContainer" -}}
runAsNonRoot: true
runAsUser: {{ index . 0 }}
runAsGroup: {{ index . 1 }}
allowPrivilegeEscalation: false
readOnlyRootFilesystem: true
capabilities:
  drop:
    - ALL
seccompProfile:
  type: RuntimeDefault
{{- end }}

{{/* Resources of the node container: `resources` when set, else the mode's `defaultResources`. */}}
{{- define "agave.resources" -}}
{{- if .Values.resources }}
{{- toYaml .Values.resources }}
{{- else }}
{{- toYaml (get .Values.defaultResources .Values.mode) }}
{{- end }}
{{- end }}

{{/* Name of the Secret holding SOLANA_METRICS_CONFIG, or nothing. */}}
{{- define "agave.metricsSecretName" -}}
{{- if .Values.metrics.existingSecret }}
{{- .Values.metrics.existingSecret }}
{{- else if .Values.metrics.config }}
{{- printf "%s-metrics" (include "agave.fullname" .) }}
{{- end }}
{{- end }}
