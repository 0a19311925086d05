{{/* The release's objects are named after it, and the chart when the release name lacks it. */}}
{{- define "smtpbridge.fullname" -}}
{{- if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "smtpbridge.selectorLabels" -}}
app.kubernetes.io/name: {{ .Chart.Name }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "smtpbridge.labels" -}}
{{ include "smtpbridge.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end -}}

{{- define "smtpbridge.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "smtpbridge.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{/* The bridge's pods: the Services, the PDB and the NetworkPolicies pick them, not the Redis pod, which has the selector labels too. */}}
{{- define "smtpbridge.bridgeLabels" -}}
{{ include "smtpbridge.selectorLabels" . }}
app.kubernetes.io/component: bridge
{{- end -}}

{{- define "smtpbridge.redisLabels" -}}
{{ include "smtpbridge.selectorLabels" . }}
app.kubernetes.io/component: redis
{{- end -}}

{{/* The Secret with the release's Redis's password (key "password"). */}}
{{- define "smtpbridge.redisSecret" -}}
{{- default (printf "%s-redis" (include "smtpbridge.fullname" .)) .Values.redis.auth.existingSecret -}}
{{- end -}}

{{/* Whether the replicas share their limits through Redis. */}}
{{- define "smtpbridge.clustered" -}}
{{- $e := .Values.redis.external -}}
{{- if or .Values.redis.enabled $e.address $e.sentinelAddresses $e.clusterAddresses -}}true{{- end -}}
{{- end -}}

{{/* The config the bridge reads: values' config with what the chart sets. */}}
{{- define "smtpbridge.config" -}}
{{- $cfg := deepCopy .Values.config -}}
{{- $_ := set $cfg "spool" (merge (dict "dir" "/var/lib/smtpbridge/spool") (default (dict) $cfg.spool)) -}}
{{- $http := merge (dict "address" (printf "0.0.0.0:%d" (int .Values.http.port))) (default (dict) $cfg.http) -}}
{{- if .Values.httpAuth.secretName -}}
{{- $_ := set $http "auth" (dict "username" .Values.httpAuth.username "password_file" "/etc/smtpbridge/http/password") -}}
{{- end -}}
{{- $_ := set $cfg "http" $http -}}
{{- $_ := set $cfg "log" (merge (dict "format" "json") (default (dict) $cfg.log)) -}}
{{- if .Values.sandbox -}}
{{- $_ := set $cfg "sandbox" (dict "dir" "/var/lib/smtpbridge/sandbox-mail") -}}
{{- end -}}
{{- if include "smtpbridge.clustered" . -}}
{{- $e := .Values.redis.external -}}
{{- $r := dict "key_prefix" .Values.redis.keyPrefix -}}
{{- if .Values.redis.enabled -}}
{{- $_ := set $r "address" (printf "%s-redis:6379" (include "smtpbridge.fullname" .)) -}}
{{- $_ := set $r "password_file" "/etc/smtpbridge/redis/password" -}}
{{- if .Values.redis.tls.secretName -}}
{{- $_ := set $r "tls" true -}}
{{- $_ := set $r "ca_file" "/etc/smtpbridge/redis-tls/ca.crt" -}}
{{- end -}}
{{- else -}}
{{- with $e.address }}{{ $_ := set $r "address" . }}{{ end -}}
{{- with $e.sentinelAddresses }}{{ $_ := set $r "sentinel_addresses" . }}{{ end -}}
{{- with $e.masterName }}{{ $_ := set $r "master_name" . }}{{ end -}}
{{- with $e.clusterAddresses }}{{ $_ := set $r "cluster_addresses" . }}{{ end -}}
{{- with $e.username }}{{ $_ := set $r "username" . }}{{ end -}}
{{- if $e.passwordSecret }}{{ $_ := set $r "password_file" "/etc/smtpbridge/redis/password" }}{{ end -}}
{{- if $e.tls }}{{ $_ := set $r "tls" true }}{{ end -}}
{{- end -}}
{{- $_ := set $cfg "cluster" (dict "redis" $r "lease_ttl" .Values.leaseTTL) -}}
{{- end -}}
{{- toYaml $cfg -}}
{{- end -}}
