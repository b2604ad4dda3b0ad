{{/* The release's name for every object. */}}
{{- define "mupdate.fullname" -}}
{{- if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "mupdate.labels" -}}
app.kubernetes.io/name: {{ .Chart.Name }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end -}}

{{- define "mupdate.selectorLabels" -}}
app.kubernetes.io/name: {{ .Chart.Name }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{/* Pod 0's stable name and MUPDATE port: the master every pod's -a compares with. */}}
{{- define "mupdate.masterAddress" -}}
{{- $name := include "mupdate.fullname" . -}}
{{- printf "%s-0.%s-headless.%s.svc.%s:%v" $name $name .Release.Namespace .Values.clusterDomain .Values.service.port -}}
{{- end -}}
