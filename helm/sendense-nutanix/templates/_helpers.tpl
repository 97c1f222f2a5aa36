{{/* Chart name, or nameOverride. */}}
{{- define "sendense-nutanix.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Prefix of every object name: fullnameOverride, else the chart name (one operator per namespace, so no release prefix). */}}
{{- define "sendense-nutanix.fullname" -}}
{{- default (include "sendense-nutanix.name" .) .Values.fullnameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Namespace the operator manages: CRs, Secrets, PVCs, export Jobs, the mover's ServiceAccount. */}}
{{- define "sendense-nutanix.watchNamespace" -}}
{{- default .Release.Namespace .Values.watchNamespace }}
{{- end }}

{{- define "sendense-nutanix.serviceAccountName" -}}
{{- default (include "sendense-nutanix.fullname" .) .Values.serviceAccount.name }}
{{- end }}

{{- define "sendense-nutanix.selectorLabels" -}}
app.kubernetes.io/name: {{ include "sendense-nutanix.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "sendense-nutanix.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{ include "sendense-nutanix.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: sendense-nutanix
{{- end }}

{{- define "sendense-nutanix.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}

{{/* The mover runs from the operator's image unless mover.image says otherwise. */}}
{{- define "sendense-nutanix.moverImage" -}}
{{- printf "%s:%s" (default .Values.image.repository .Values.mover.image.repository) (default (default .Chart.AppVersion .Values.image.tag) .Values.mover.image.tag) }}
{{- end }}
