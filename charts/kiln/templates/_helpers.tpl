{{/*
Names, labels and values shared by the templates.
*/}}

{{- define "kiln.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* The prefix of every object's name: the release name, or release-chart. */}}
{{- define "kiln.fullname" -}}
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

{{- define "kiln.controller.fullname" -}}
{{- printf "%s-controller" (include "kiln.fullname" .) | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "kiln.cache.fullname" -}}
{{- printf "%s-cache" (include "kiln.fullname" .) | trunc 52 | trimSuffix "-" -}}
{{- end -}}

{{- define "kiln.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
app.kubernetes.io/name: {{ include "kiln.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: kiln
{{- end -}}

{{- define "kiln.selectorLabels" -}}
app.kubernetes.io/name: {{ include "kiln.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "kiln.controller.selectorLabels" -}}
{{ include "kiln.selectorLabels" . }}
app.kubernetes.io/component: controller
{{- end -}}

{{- define "kiln.cache.selectorLabels" -}}
{{ include "kiln.selectorLabels" . }}
app.kubernetes.io/component: cache
{{- end -}}

{{- define "kiln.controller.serviceAccountName" -}}
{{- default (include "kiln.controller.fullname" .) .Values.controller.serviceAccount.name -}}
{{- end -}}

{{- define "kiln.cache.serviceAccountName" -}}
{{- default (include "kiln.cache.fullname" .) .Values.cache.serviceAccount.name -}}
{{- end -}}

{{/* The Kiln image reference: by digest when one is given. */}}
{{- define "kiln.image" -}}
{{- if .Values.image.digest -}}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest -}}
{{- else -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) -}}
{{- end -}}
{{- end -}}

{{/* host:port of the cache Service, as build pods in any namespace reach it. */}}
{{- define "kiln.cache.host" -}}
{{- printf "%s.%s.svc.%s:%d" (include "kiln.cache.fullname" .) .Release.Namespace .Values.clusterDomain (int .Values.cache.port) -}}
{{- end -}}

{{- define "kiln.cache.url" -}}
{{- printf "http://%s" (include "kiln.cache.host" .) -}}
{{- end -}}

{{- define "kiln.tokenKey.secretName" -}}
{{- default (printf "%s-token-key" (include "kiln.cache.fullname" .)) .Values.cache.tokenKey.existingSecret -}}
{{- end -}}

{{- define "kiln.adminToken.secretName" -}}
{{- default (printf "%s-admin-token" (include "kiln.cache.fullname" .)) .Values.cache.adminToken.existingSecret -}}
{{- end -}}

{{/*
A generated secret value, base64-encoded: the one already stored in the release's Secret
(so that upgrades keep it), or a new random one. Arguments: (list $ secretName key length).
*/}}
{{- define "kiln.generatedSecretValue" -}}
{{- $root := index . 0 -}}
{{- $name := index . 1 -}}
{{- $key := index . 2 -}}
{{- $length := index . 3 -}}
{{- $existing := lookup "v1" "Secret" $root.Release.Namespace $name -}}
{{- if and $existing $existing.data (hasKey $existing.data $key) -}}
{{- index $existing.data $key -}}
{{- else -}}
{{- randAlphaNum $length | b64enc -}}
{{- end -}}
{{- end -}}

{{/* The restricted container security context every container runs with. */}}
{{- define "kiln.containerSecurityContext" -}}
allowPrivilegeEscalation: false
readOnlyRootFilesystem: true
runAsNonRoot: true
runAsUser: 65532
runAsGroup: 65532
capabilities:
  drop:
    - ALL
seccompProfile:
  type: RuntimeDefault
{{- end -}}

{{/* The pod security context of both components (group-readable Secret files, a writable PV). */}}
{{- define "kiln.podSecurityContext" -}}
runAsNonRoot: true
runAsUser: 65532
runAsGroup: 65532
fsGroup: 65532
fsGroupChangePolicy: OnRootMismatch
seccompProfile:
  type: RuntimeDefault
{{- end -}}

{{/*
A map of labels as `key=value,key=value`, in key order (Go templates range over a map's
sorted keys): the form of --platform-node-selector.
*/}}
{{- define "kiln.labelList" -}}
{{- $pairs := list -}}
{{- range $key, $value := . -}}
{{- $pairs = append $pairs (printf "%s=%s" $key $value) -}}
{{- end -}}
{{- join "," $pairs -}}
{{- end -}}
