{{/* Names and labels shared by every object of the release. */}}
{{- define "signet.fullname" -}}
{{- if contains "signet" .Release.Name -}}
{{- .Release.Name | trunc 50 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-signet" .Release.Name | trunc 50 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "signet.labels" -}}
app.kubernetes.io/part-of: signet
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end -}}

{{/* image "operator" -> registry/operator:tag unless overridden */}}
{{- define "signet.image" -}}
{{- $root := index . 0 -}}
{{- $name := index . 1 -}}
{{- $component := index $root.Values $name -}}
{{- $repository := $component.image.repository | default (printf "%s/%s" $root.Values.image.registry $name) -}}
{{- $tag := $component.image.tag | default $root.Values.image.tag | default $root.Chart.AppVersion -}}
{{- printf "%s:%s" $repository $tag -}}
{{- end -}}

{{- define "signet.operatorName" -}}{{ include "signet.fullname" . }}-operator{{- end -}}
{{- define "signet.agentName" -}}{{ include "signet.fullname" . }}-agent{{- end -}}
{{- define "signet.bundleConfigMap" -}}{{ include "signet.fullname" . }}-bundle{{- end -}}
{{- define "signet.caSecret" -}}{{ include "signet.fullname" . }}-ca{{- end -}}
{{- define "signet.issuerAudience" -}}signet-issuer{{- end -}}
