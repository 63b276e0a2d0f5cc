{{- define "mini.labels" -}}
app.kubernetes.io/name: mini
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}
{{- define "mini.serviceAccount" -}}
{{ .Values.serviceAccount.name | default .Release.Name }}
{{- end }}
{{- define "mini.clusterRole" -}}
{{ .Values.clusterRole.name | default .Release.Name }}
{{- end }}
