{{/*
The rules Ekko's code needs, in one place. Each rule names the code that uses it; the allow-list
in charts/ekko/rbac-usage.yaml repeats them with the code paths, and e2e/test_helm.py fails when
the rendered rules and the allow-list disagree or when a rule contains a wildcard.
To grant something new: add it here AND in rbac-usage.yaml, with the code path that needs it.
*/}}

{{/* The operator, in each namespace it watches (RoleBindings) or everywhere (ClusterRoleBinding). */}}
{{- define "ekko.rules.operator" -}}
# ekko/kube/fleet.py get_pool; kopf on.event(serverpools) list/watch; worker status patches.
- apiGroups: ["ekko.dev"]
  resources: ["serverpools"]
  verbs: ["get", "list", "watch"]
# ekko/kube/fleet.py list_models, get_model; kopf on.event(models) list/watch.
- apiGroups: ["ekko.dev"]
  resources: ["models"]
  verbs: ["get", "list", "watch"]
# ekko/kube/fleet.py patch_status (pool and model status; routing weights live in Model status).
- apiGroups: ["ekko.dev"]
  resources: ["serverpools/status", "models/status"]
  verbs: ["patch"]
# ekko/kube/fleet.py observe, model_servers, write_assignment, delete_server;
# kopf on.event(serverassignments).
- apiGroups: ["ekko.dev"]
  resources: ["serverassignments"]
  verbs: ["list", "watch", "create", "patch", "delete"]
# ekko/kube/fleet.py list_versions, get_version; kopf on.event(modelversions).
- apiGroups: ["ekko.dev"]
  resources: ["modelversions"]
  verbs: ["get", "list", "watch"]
- apiGroups: ["ekko.dev"]
  resources: ["modelversions/status"]
  verbs: ["patch"]
# ekko/kube/updates.py observe; kopf on.event(updatestreams) list/watch.
- apiGroups: ["ekko.dev"]
  resources: ["updatestreams"]
  verbs: ["get", "list", "watch"]
# ekko/kube/updates.py patch_status (freshness and traffic).
- apiGroups: ["ekko.dev"]
  resources: ["updatestreams/status"]
  verbs: ["patch"]
# Server pods and assignments carry ownerReferences with blockOwnerDeletion to their pool; API
# servers with OwnerReferencesPermissionEnforcement require update on the owner's finalizers.
- apiGroups: ["ekko.dev"]
  resources: ["serverpools/finalizers"]
  verbs: ["update"]
# ekko/kube/fleet.py observe, create_server, delete_server, delete_pod; kopf on.event(pods);
# create_server on a name taken: get the pod, and label again one the pool owns that lost its label.
- apiGroups: [""]
  resources: ["pods"]
  verbs: ["get", "list", "watch", "create", "patch", "delete"]
# ekko/kube/fleet.py ensure_peering (--peering) creates KopfPeering "ekko"; kopf's peering
# keep-alive patches its status and its observer lists and watches it.
- apiGroups: ["kopf.dev"]
  resources: ["kopfpeerings"]
  verbs: ["get", "list", "watch", "create", "patch"]
# ekko/kube/fleet.py event; kopf posts warnings and errors as core/v1 events.
- apiGroups: [""]
  resources: ["events"]
  verbs: ["create"]
{{- end -}}

{{/* The operator, cluster-scoped resources (always a ClusterRoleBinding). */}}
{{- define "ekko.rules.operatorCluster" -}}
# ekko/kube/fleet.py observe (node zones and readiness); kopf on.event(nodes).
- apiGroups: [""]
  resources: ["nodes"]
  verbs: ["list", "watch"]
# No rights on webhook configurations: the chart registers the webhook itself
# (templates/webhook.yaml) and the operator runs with --webhook-unmanaged.
{{- if not .Values.operator.watchNamespaces }}
# Cluster-wide (-A): the same for ClusterKopfPeering "ekko".
- apiGroups: ["kopf.dev"]
  resources: ["clusterkopfpeerings"]
  verbs: ["get", "list", "watch", "create", "patch"]
{{- end }}
# kopf's resource observer: notices CRDs installed or upgraded after the operator started.
- apiGroups: ["apiextensions.k8s.io"]
  resources: ["customresourcedefinitions"]
  verbs: ["list", "watch"]
{{- if .Values.operator.watchNamespaces }}
# kopf's namespace observer (only with -n): follows the watched namespaces appearing and going.
- apiGroups: [""]
  resources: ["namespaces"]
  verbs: ["list", "watch"]
{{- end }}
{{- end -}}

{{/* The agent sidecar, in each namespace of server pods. */}}
{{- define "ekko.rules.agent" -}}
# ekko/kube/agentio.py watch_assignment (list+watch, field selector on its own name).
- apiGroups: ["ekko.dev"]
  resources: ["serverassignments"]
  verbs: ["list", "watch"]
# ekko/kube/agentio.py patch_status: what the agent loaded and applied.
- apiGroups: ["ekko.dev"]
  resources: ["serverassignments/status"]
  verbs: ["patch"]
# ekko/kube/agentio.py watch_models: routing weights in Model status.
- apiGroups: ["ekko.dev"]
  resources: ["models"]
  verbs: ["list", "watch"]
# ekko/kube/agentio.py pod_uid: is its own pod still the one with its name (orphan check).
- apiGroups: [""]
  resources: ["pods"]
  verbs: ["get"]
{{- end -}}

{{/* People: aggregated into the built-in `view` ClusterRole (read Ekko's objects, as
`kubectl get` and `kubectl ekko status|updates` do). */}}
{{- define "ekko.rules.view" -}}
# kubectl get; ekko/cli/kubectl_ekko.py status / updates (and the pods they read come with view).
- apiGroups: ["ekko.dev"]
  resources: ["serverpools", "models", "modelversions", "updatestreams", "serverassignments"]
  verbs: ["get", "list", "watch"]
{{- end -}}

{{/* People: aggregated into the built-in `edit` and `admin` ClusterRoles (apply manifests,
drive rollouts and update streams with `kubectl ekko`). Assignments stay read-only: the operator
owns them. */}}
{{- define "ekko.rules.edit" -}}
# kubectl apply / delete of the user's own objects.
- apiGroups: ["ekko.dev"]
  resources: ["serverpools", "models", "modelversions", "updatestreams"]
  verbs: ["create", "update", "patch", "delete", "deletecollection"]
# ekko/cli/kubectl_ekko.py rollback (routing) and updates rollback (the control block) write the
# Model's status themselves, so that they work with the operator down.
- apiGroups: ["ekko.dev"]
  resources: ["models/status"]
  verbs: ["patch"]
{{- end -}}
