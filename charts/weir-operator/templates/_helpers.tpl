{{/* The chart's name, or nameOverride, at most 63 characters. */}}
{{- define "weir-operator.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* The release's full name, at most 63 characters: fullnameOverride, or the release
name followed by the chart's name unless it already contains it. */}}
{{- define "weir-operator.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- $name := include "weir-operator.name" . -}}
{{- if contains $name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{/* Labels of every object; the selector labels are a stable subset. */}}
{{- define "weir-operator.selectorLabels" -}}
app.kubernetes.io/name: {{ include "weir-operator.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "weir-operator.labels" -}}
{{ include "weir-operator.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: weir
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end -}}

{{- define "weir-operator.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "weir-operator.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{/* The operator's metrics Service; a Service name has at most 63 characters. */}}
{{- define "weir-operator.metricsService" -}}
{{- printf "%s-metrics" (include "weir-operator.fullname" . | trunc 55 | trimSuffix "-") -}}
{{- end -}}

{{/* One ServiceMonitor endpoint: port `metrics`, with .Values.metrics.serviceMonitor's
interval, timeout and relabelings. Called with that map. */}}
{{- define "weir-operator.scrapeEndpoint" -}}
port: metrics
path: /metrics
{{- with .interval }}
interval: {{ . }}
{{- end }}
{{- with .scrapeTimeout }}
scrapeTimeout: {{ . }}
{{- end }}
{{- with .relabelings }}
relabelings:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .metricRelabelings }}
metricRelabelings:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- end -}}

{{/* Labels of one alert: its severity and metrics.prometheusRule.additionalLabels.
Called with (list <alert settings> <additional labels>). */}}
{{- define "weir-operator.alertLabels" -}}
severity: {{ (index . 0).severity | quote }}
{{- with index . 1 }}
{{ toYaml . }}
{{- end }}
{{- end -}}
