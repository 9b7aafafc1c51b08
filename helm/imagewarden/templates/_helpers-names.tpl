{{- /*
  ## About
  Every name of every object this chart creates comes from one `define` in this file, so a
  template never spells a name by hand and a reference (Service -> Deployment, RoleBinding ->
  ServiceAccount, the hub snippet in NOTES.txt -> Service) cannot drift from the object.

  ## Contract
  Each helper takes the root scope (.) and returns a DNS-1123 name of at most 63 characters:
  "<fullname>-<component>", where <fullname> is
    - .Values.fullnameOverride when set,
    - else the release name when it already contains "imagewarden" (release "imagewarden"
      gives "imagewarden-checker"),
    - else "<release>-imagewarden".
*/}}


{{- define "imagewarden.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 52 | trimSuffix "-" -}}
{{- else if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 52 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 52 | trimSuffix "-" -}}
{{- end -}}
{{- end }}


{{- /* Shared: the ConfigMap holding the imagewarden config file. */}}
{{- define "imagewarden.config.fullname" -}}
{{- include "imagewarden.fullname" . }}-config
{{- end }}


{{- /* Checker: Deployment, Service, PodDisruptionBudget, NetworkPolicy, ServiceMonitor. */}}
{{- define "imagewarden.checker.fullname" -}}
{{- include "imagewarden.fullname" . }}-checker
{{- end }}

{{- define "imagewarden.checker-serviceaccount.fullname" -}}
{{- include "imagewarden.fullname" . }}-checker
{{- end }}


{{- /* Controller: Deployment, Service (metrics, /status), NetworkPolicy, ServiceMonitor. */}}
{{- define "imagewarden.controller.fullname" -}}
{{- include "imagewarden.fullname" . }}-controller
{{- end }}

{{- define "imagewarden.controller-serviceaccount.fullname" -}}
{{- include "imagewarden.fullname" . }}-controller
{{- end }}

{{- /* Role + RoleBinding in the release namespace: the leader-election Lease. */}}
{{- define "imagewarden.controller-leader-election.fullname" -}}
{{- include "imagewarden.fullname" . }}-controller-leader-election
{{- end }}

{{- /* Role + RoleBinding in the pre-pull namespace: DaemonSets, Pods, Events. */}}
{{- define "imagewarden.controller-prepull.fullname" -}}
{{- include "imagewarden.fullname" . }}-controller-prepull
{{- end }}

{{- /* ClusterRole + ClusterRoleBinding: Nodes (cluster-scoped). Prefixed by the namespace so
two releases in different namespaces do not collide. */}}
{{- define "imagewarden.controller-nodes.fullname" -}}
{{- printf "%s-%s-controller-nodes" .Release.Namespace (include "imagewarden.fullname" .) | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- /* The coordination.k8s.io Lease that makes exactly one controller replica act. Fixed
by the controller (imagewarden.prepull.controller.LEASE_NAME), so one release per pre-pull
namespace; named here so the RBAC rule that names it has one source in the chart. */}}
{{- define "imagewarden.controller-lease.fullname" -}}
imagewarden-prepull
{{- end }}


{{- /* Grafana dashboard ConfigMap (for the Grafana sidecar). */}}
{{- define "imagewarden.dashboard.fullname" -}}
{{- include "imagewarden.fullname" . }}-dashboard
{{- end }}
