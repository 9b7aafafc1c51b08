{{- /*
  ## About
  Helpers that label and select objects, and render the parts every pod shares (image,
  security context, config volume). Names live in _helpers-names.tpl.

  ## Scopes
  Every helper takes the root scope (.), so it can read .Values, .Release and .Chart.
  Where a helper needs more, the caller merges a small dict INTO a copy of the root scope:

      {{- $scope := merge (dict "componentLabel" "checker") . }}
      {{- include "imagewarden.matchLabels" $scope | nindent 6 }}

  `merge` lets the first argument win, so the fresh dict goes first and the root scope last;
  the other order would let .componentLabel from an outer scope override the new one.

  ## Declared helpers
  - imagewarden.componentLabel   the component: .componentLabel if given, else the template's
                                 folder (templates/checker/* -> "checker"), else its file name
                                 (templates/configmap.yaml -> "configmap")
  - imagewarden.matchLabels      selector labels: name, instance, component. Never change
                                 these on an installed release: Deployment selectors are
                                 immutable.
  - imagewarden.labels           matchLabels + chart, version, managed-by
  - imagewarden.image            "name:tag" (tag defaults to .Chart.AppVersion)
  - imagewarden.podSecurityContext / imagewarden.containerSecurityContext
                                 the restricted profile every pod and container gets
  - imagewarden.configPath       where the config file is mounted in every container
  - imagewarden.configVolumes / imagewarden.configVolumeMounts
                                 config ConfigMap, /tmp emptyDir and the registry credential
                                 Secrets (dockerconfigjson, mounted as files)
  - imagewarden.configFile       the imagewarden config file rendered from .Values.config
  - imagewarden.prepullNamespace where the pre-pull DaemonSets live
  - imagewarden.checkerUrl       the URL the hub calls
  - imagewarden.hubValuesSnippet the z2jh values that connect a hub (NOTES.txt and README)
*/}}


{{- define "imagewarden.componentLabel" -}}
{{- $file := .Template.Name | base | trimSuffix ".yaml" -}}
{{- $parent := .Template.Name | dir | base | trimPrefix "templates" -}}
{{- .componentLabel | default $parent | default $file -}}
{{- end }}


{{- define "imagewarden.matchLabels" -}}
app.kubernetes.io/name: {{ .Chart.Name }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: {{ include "imagewarden.componentLabel" . }}
{{- end }}


{{- define "imagewarden.labels" -}}
{{ include "imagewarden.matchLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
{{- end }}


{{- define "imagewarden.image" -}}
{{- printf "%s:%s" .Values.image.name (.Values.image.tag | default .Chart.AppVersion) }}
{{- end }}


{{- define "imagewarden.podSecurityContext" -}}
runAsNonRoot: true
runAsUser: {{ .Values.securityContext.runAsUser }}
runAsGroup: {{ .Values.securityContext.runAsGroup }}
fsGroup: {{ .Values.securityContext.runAsGroup }}
seccompProfile:
  type: RuntimeDefault
{{- end }}


{{- define "imagewarden.containerSecurityContext" -}}
runAsNonRoot: true
runAsUser: {{ .Values.securityContext.runAsUser }}
runAsGroup: {{ .Values.securityContext.runAsGroup }}
allowPrivilegeEscalation: false
readOnlyRootFilesystem: true
capabilities:
  drop: ["ALL"]
seccompProfile:
  type: RuntimeDefault
{{- end }}


{{- define "imagewarden.configPath" -}}
/etc/imagewarden/config/config.yaml
{{- end }}


{{- define "imagewarden.registryCredentialsPath" -}}
/etc/imagewarden/registry-credentials
{{- end }}


{{- define "imagewarden.apiTokenPath" -}}
/etc/imagewarden/api-token/{{ .Values.apiToken.key }}
{{- end }}


{{- define "imagewarden.configVolumes" -}}
- name: config
  configMap:
    name: {{ include "imagewarden.config.fullname" . }}
- name: tmp
  emptyDir:
    sizeLimit: 64Mi
{{- range .Values.registryCredentials.dockerconfigjsonSecrets }}
- name: regcred-{{ . }}
  secret:
    secretName: {{ . }}
    defaultMode: 0440
    items:
      - key: .dockerconfigjson
        path: .dockerconfigjson
{{- end }}
{{- end }}


{{- define "imagewarden.configVolumeMounts" -}}
- name: config
  mountPath: /etc/imagewarden/config
  readOnly: true
- name: tmp
  mountPath: /tmp
{{- range .Values.registryCredentials.dockerconfigjsonSecrets }}
- name: regcred-{{ . }}
  mountPath: {{ include "imagewarden.registryCredentialsPath" $ }}/{{ . }}
  readOnly: true
{{- end }}
{{- end }}


{{- define "imagewarden.prepullNamespace" -}}
{{- .Values.config.prepull.namespace | default .Release.Namespace }}
{{- end }}


{{- /*
  The config file. Only keys the imagewarden loader knows are written (it rejects unknown
  keys); the schema keeps .Values.config to the same set. The chart owns the listen address,
  the token file and the credential files, because it owns the mounts behind them.
*/}}
{{- define "imagewarden.configFile" -}}
{{- $config := .Values.config -}}
{{- $service := dict "host" "0.0.0.0" "port" (int .Values.checker.port) -}}
{{- $_ := set $service "max_body_bytes" (int $config.service.max_body_bytes) -}}
{{- $_ := set $service "max_concurrent_checks" (int $config.service.max_concurrent_checks) -}}
{{- if .Values.apiToken.existingSecret -}}
{{- $_ := set $service "token_file" (include "imagewarden.apiTokenPath" .) -}}
{{- end -}}
{{- $files := list -}}
{{- range .Values.registryCredentials.dockerconfigjsonSecrets -}}
{{- $files = append $files (printf "%s/%s/.dockerconfigjson" (include "imagewarden.registryCredentialsPath" $) .) -}}
{{- end -}}
{{- $prepull := dict
      "namespace" (include "imagewarden.prepullNamespace" .)
      "noop_image" ($config.prepull.noop_image | default (include "imagewarden.image" .))
-}}
{{- /* Unset (empty) prepull keys are left out: the loader's defaults apply. */ -}}
{{- range $key, $value := $config.prepull -}}
{{- if and $value (not (hasKey $prepull $key)) -}}
{{- $_ := set $prepull $key $value -}}
{{- end -}}
{{- end -}}
{{- $file := dict
      "registries" $config.registries
      "credentials" (dict "dockerconfigjson_files" $files)
      "policy" $config.policy
      "profiles" $config.profiles
      "checker" $config.checker
      "service" $service
      "prepull" $prepull
-}}
{{- toYaml $file }}
{{- end }}


{{- define "imagewarden.checkerUrl" -}}
{{- printf "http://%s.%s.svc:%d" (include "imagewarden.checker.fullname" .) .Release.Namespace (int .Values.checker.service.port) }}
{{- end }}


{{- /*
  The z2jh values that connect a hub to this release. Kept here, in one place: NOTES.txt
  prints it and tests/test_chart.py checks the README's copy against it.
*/}}
{{- define "imagewarden.hubValuesSnippet" -}}
hub:
  {{- if .Values.apiToken.existingSecret }}
  extraVolumes:
    - name: imagewarden-api-token
      secret:
        secretName: {{ .Values.apiToken.existingSecret }}
  extraVolumeMounts:
    - name: imagewarden-api-token
      mountPath: /etc/imagewarden-api-token
      readOnly: true
  {{- end }}
  extraConfig:
    imagewarden: |
      from imagewarden.hub import configure
      configure(
          c,
          url="{{ include "imagewarden.checkerUrl" . }}",
          {{- if .Values.apiToken.existingSecret }}
          token_file="/etc/imagewarden-api-token/{{ .Values.apiToken.key }}",
          {{- else }}
          token_file=None,
          {{- end }}
      )
{{- end }}
