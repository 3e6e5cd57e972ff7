{{/* Names, labels and the settings -> EVOTOK_* rendering shared by all templates. */}}

{{- define "evotok.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "evotok.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- $name := default .Chart.Name .Values.nameOverride -}}
{{- if contains $name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{- define "evotok.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
app.kubernetes.io/name: {{ include "evotok.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: evotok
{{- end -}}

{{/* selector labels; call with (dict "ctx" $ "component" "api") */}}
{{- define "evotok.selectorLabels" -}}
app.kubernetes.io/name: {{ include "evotok.name" .ctx }}
app.kubernetes.io/instance: {{ .ctx.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end -}}

{{/* pod template labels: selector labels plus version; call like evotok.selectorLabels */}}
{{- define "evotok.podLabels" -}}
{{ include "evotok.selectorLabels" . }}
app.kubernetes.io/version: {{ .ctx.Chart.AppVersion | quote }}
app.kubernetes.io/part-of: evotok
{{- end -}}

{{- define "evotok.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "evotok.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{- define "evotok.secretName" -}}
{{- default (printf "%s-secrets" (include "evotok.fullname" .)) .Values.existingSecret -}}
{{- end -}}

{{- define "evotok.redisHost" -}}
{{- printf "%s-redis" (include "evotok.fullname" .) -}}
{{- end -}}

{{/* EVOTOK_REDIS_URL: settings.redis_url, else the chart's own Redis */}}
{{- define "evotok.redisUrl" -}}
{{- if .Values.settings.redis_url -}}
{{- .Values.settings.redis_url -}}
{{- else if .Values.redis.enabled -}}
{{- printf "redis://%s:6379/0" (include "evotok.redisHost" .) -}}
{{- else -}}
{{- fail "redis.enabled=false needs settings.redis_url (an external Redis >= 7.0)" -}}
{{- end -}}
{{- end -}}

{{- define "evotok.image" -}}
{{- $tag := default (printf "%s-%s" .ctx.Chart.AppVersion .flavour) .image.tag -}}
{{- printf "%s:%s" .image.repository $tag -}}
{{- end -}}

{{/* One settings value as an environment string: lists as JSON, whole floats as integers. */}}
{{- define "evotok.envValue" -}}
{{- $v := . -}}
{{- if kindIs "slice" $v -}}
{{- toJson $v -}}
{{- else if kindIs "bool" $v -}}
{{- ternary "true" "false" $v -}}
{{- else if kindIs "float64" $v -}}
{{- if eq $v (floor $v) -}}{{- int64 $v -}}{{- else -}}{{- $v -}}{{- end -}}
{{- else if kindIs "invalid" $v -}}
{{- "" -}}
{{- else -}}
{{- $v -}}
{{- end -}}
{{- end -}}

{{/* Settings fields that never go into a ConfigMap. */}}
{{- define "evotok.secretFields" -}}
redis_password api_keys
{{- end -}}

{{/* ConfigMap data for one role; call with (dict "ctx" $ "role" .Values.api) */}}
{{- define "evotok.settingsData" -}}
{{- $ctx := .ctx -}}
{{- $merged := merge (deepCopy (default dict .role.settings)) (deepCopy $ctx.Values.settings) -}}
{{- $_ := set $merged "redis_url" (include "evotok.redisUrl" $ctx) -}}
{{- $secret := splitList " " (include "evotok.secretFields" $ctx) -}}
{{- range $key := keys $merged | sortAlpha }}
{{- if not (has $key $secret) }}
{{ printf "EVOTOK_%s" (upper $key) }}: {{ include "evotok.envValue" (index $merged $key) | quote }}
{{- end }}
{{- end }}
{{- end -}}

{{/* env / volumes shared by the API and worker containers */}}
{{- define "evotok.envFrom" -}}
- configMapRef:
    name: {{ .name }}
- secretRef:
    name: {{ include "evotok.secretName" .ctx }}
{{- end -}}
