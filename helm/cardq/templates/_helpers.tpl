{{/*
Names and labels.
*/}}
{{- define "cardq.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "cardq.fullname" -}}
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

{{- define "cardq.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "cardq.selectorLabels" -}}
app.kubernetes.io/name: {{ include "cardq.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "cardq.labels" -}}
helm.sh/chart: {{ include "cardq.chart" . }}
{{ include "cardq.selectorLabels" . }}
app.kubernetes.io/version: {{ .Values.image.tag | default .Chart.AppVersion | quote }}
app.kubernetes.io/component: worker
app.kubernetes.io/part-of: cardq
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end }}

{{- define "cardq.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "cardq.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "cardq.image" -}}
{{- if .Values.image.digest }}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest }}
{{- else }}
{{- printf "%s:%s" .Values.image.repository (.Values.image.tag | default .Chart.AppVersion) }}
{{- end }}
{{- end }}

{{/*
The worker's configuration: .Values.config (already merged over the chart's defaults by
Helm) with the server address forced to the Service's port.
*/}}
{{- define "cardq.config" -}}
{{- $config := deepCopy (.Values.config | default dict) }}
{{- $obs := get $config "observability" | default dict }}
{{- $_ := set $obs "port" (int .Values.service.port) }}
{{- $_ := set $obs "host" "0.0.0.0" }}
{{- $_ := set $config "observability" $obs }}
{{- $kafka := get $config "kafka" | default dict }}
{{- if .Values.partitionAssignmentStrategy }}
{{- $_ := set $kafka "partition_assignment_strategy" .Values.partitionAssignmentStrategy }}
{{- end }}
{{- if and (eq .Values.workload "StatefulSet") .Values.staticMembership (not (hasKey $kafka "session_timeout_ms")) }}
{{- /* A static member keeps its partitions while it restarts, for this long. */}}
{{- $_ := set $kafka "session_timeout_ms" (int .Values.statefulSet.sessionTimeoutMs) }}
{{- end }}
{{- $_ := set $config "kafka" $kafka }}
{{- toYaml $config }}
{{- end }}

{{/*
What the worker and its configuration check both see: environment, Secret, mounts.
*/}}
{{- define "cardq.runtime" -}}
env:
  - name: CARDQ_CONFIG
    value: /etc/cardq/config.yaml
  - name: CARDQ_WORKER_ID
    valueFrom:
      fieldRef:
        fieldPath: metadata.name
  {{- if .Values.staticMembership }}
  - name: CARDQ_KAFKA__GROUP_INSTANCE_ID
    valueFrom:
      fieldRef:
        fieldPath: metadata.name
  {{- end }}
  {{- with .Values.extraEnv }}
  {{- toYaml . | nindent 2 }}
  {{- end }}
{{- if or (and .Values.existingSecret .Values.secretEnv.enabled) .Values.extraEnvFrom }}
envFrom:
  {{- if and .Values.existingSecret .Values.secretEnv.enabled }}
  - secretRef:
      name: {{ .Values.existingSecret }}
  {{- end }}
  {{- with .Values.extraEnvFrom }}
  {{- toYaml . | nindent 2 }}
  {{- end }}
{{- end }}
volumeMounts:
  - name: config
    mountPath: /etc/cardq/config.yaml
    subPath: config.yaml
    readOnly: true
  - name: tmp
    mountPath: /tmp
  {{- if .Values.secretFiles.enabled }}
  - name: secrets
    mountPath: {{ .Values.secretFiles.mountPath }}
    readOnly: true
  {{- end }}
  {{- with .Values.extraVolumeMounts }}
  {{- toYaml . | nindent 2 }}
  {{- end }}
{{- end }}

{{/* delivery.drain_grace_s as the worker will read it (20 when unset). */}}
{{- define "cardq.drainGrace" -}}
{{- $delivery := get (.Values.config | default dict) "delivery" | default dict }}
{{- $grace := get $delivery "drain_grace_s" }}
{{- if kindIs "invalid" $grace }}20{{ else }}{{ $grace }}{{ end }}
{{- end }}

{{/* idempotency.store as the worker will read it (memory when unset). */}}
{{- define "cardq.idempotencyStore" -}}
{{- $idem := get (.Values.config | default dict) "idempotency" | default dict }}
{{- get $idem "store" | default "memory" }}
{{- end }}

{{/* The most pods that can run at once (outside a rollout's surge). */}}
{{- define "cardq.maxReplicas" -}}
{{- if .Values.keda.enabled }}
{{- .Values.keda.maxReplicaCount }}
{{- else if .Values.autoscaling.enabled }}
{{- .Values.autoscaling.maxReplicas }}
{{- else }}
{{- .Values.replicaCount }}
{{- end }}
{{- end }}

{{/* PromQL label matchers for this release's series. */}}
{{- define "cardq.metricSelector" -}}
{{- if .Values.metrics.selector }}
{{- .Values.metrics.selector }}
{{- else }}
{{- printf "job=%q,namespace=%q" (include "cardq.fullname" .) .Release.Namespace }}
{{- end }}
{{- end }}

{{/*
Render-time checks: what values.schema.json cannot say because it spans several values.
*/}}
{{- define "cardq.validate" -}}
{{- $grace := include "cardq.drainGrace" . | float64 }}
{{- if le (float64 .Values.terminationGracePeriodSeconds) $grace }}
{{- fail (printf "terminationGracePeriodSeconds (%v) must be longer than config.delivery.drain_grace_s (%v): Kubernetes would kill the worker while it drains in-flight sends" .Values.terminationGracePeriodSeconds $grace) }}
{{- end }}
{{- $store := include "cardq.idempotencyStore" . }}
{{- $max := include "cardq.maxReplicas" . | int }}
{{- if and (gt $max 1) (ne $store "redis") }}
{{- fail (printf "up to %d replicas can run (replicaCount / autoscaling / keda) but config.idempotency.store is %q: set config.idempotency.store=redis (with redis_url) so pods share one idempotency store, or run a single replica" $max $store) }}
{{- end }}
{{- if and .Values.keda.enabled .Values.autoscaling.enabled }}
{{- fail "keda.enabled and autoscaling.enabled are mutually exclusive: KEDA creates and owns its own HorizontalPodAutoscaler" }}
{{- end }}
{{- if and .Values.podDisruptionBudget.enabled (not (kindIs "invalid" .Values.podDisruptionBudget.minAvailable)) (not (kindIs "invalid" .Values.podDisruptionBudget.maxUnavailable)) }}
{{- fail "podDisruptionBudget: set only one of minAvailable and maxUnavailable (set the other to null)" }}
{{- end }}
{{- $obs := get (.Values.config | default dict) "observability" | default dict }}
{{- if and (hasKey $obs "port") (ne (toString (get $obs "port")) (toString .Values.service.port)) }}
{{- fail (printf "config.observability.port (%v) is set by the chart from service.port (%v): set service.port instead" (get $obs "port") .Values.service.port) }}
{{- end }}
{{- if and .Values.autoscaling.enabled (not (or .Values.autoscaling.targetCPUUtilizationPercentage .Values.autoscaling.targetMemoryUtilizationPercentage .Values.autoscaling.extraMetrics)) }}
{{- fail "autoscaling.enabled needs a metric: targetCPUUtilizationPercentage, targetMemoryUtilizationPercentage or extraMetrics" }}
{{- end }}
{{- if not (has .Values.workload (list "Deployment" "StatefulSet")) }}
{{- fail (printf "workload must be Deployment or StatefulSet, not %q" .Values.workload) }}
{{- end }}
{{- if and .Values.secretFiles.enabled (not .Values.existingSecret) }}
{{- fail "secretFiles.enabled needs existingSecret (the Secret to mount)" }}
{{- end }}
{{- end }}
