#!/usr/bin/env python3
"""Writes deploy/k8s/base from the bank's own description of who may call whom.

    sterling access | deploy/k8s/generate.py          # rewrite base/
    sterling access | deploy/k8s/generate.py --check  # fail if base/ differs (CI)

`sterling access` prints, as JSON, every service with the callers its access rules allow;
each service gets a Deployment, a Service, a PodDisruptionBudget, a HorizontalPodAutoscaler
and a NetworkPolicy that admits only those callers (plus Prometheus on the metrics port).
The engines (NATS as a 3-replica JetStream cluster, a ScyllaCluster over three racks) and the
shared configuration are written alongside. Overlays (dev, prod) patch replicas, resources and
images.
"""
import json
import sys
from pathlib import Path

BASE = Path(__file__).resolve().parent / "base"
PORT, METRICS = 7000, 9100
# Reached from outside the cluster (the card processor, customers' apps), through an ingress
# or load balancer the platform provides.
FRONT_DOORS = {"card-api", "gateway"}

OPERATOR = "operator"
ANY = "*"


def yaml(value, indent=0):
    """A small YAML writer: enough for these manifests, with stable output."""
    pad = "  " * indent
    if isinstance(value, dict):
        if not value:
            return "{}"
        lines = []
        for k, v in value.items():
            if isinstance(v, (dict, list)) and v:
                lines.append(f"{pad}{k}:\n{yaml(v, indent + 1)}")
            else:
                lines.append(f"{pad}{k}: {yaml(v)}")
        return "\n".join(lines)
    if isinstance(value, list):
        if not value:
            return "[]"
        lines = []
        for item in value:
            if isinstance(item, dict) and item:
                body = yaml(item, indent + 1)
                lines.append(f"{pad}- {body.lstrip()}")
            else:
                lines.append(f"{pad}- {yaml(item)}")
        return "\n".join(lines)
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return str(value)
    text = str(value)
    if text == "" or any(c in text for c in ":{}[],&*#?|<>=!%@`'\"") or text.strip() != text \
            or text.lower() in ("true", "false", "yes", "no", "null", "on", "off") \
            or text[0].isdigit() or text[0] == "-":
        return json.dumps(text)
    return text


def labels(service):
    return {"app.kubernetes.io/name": service, "app.kubernetes.io/part-of": "sterling"}


def speaks_http(service, callers):
    """The front doors and the public API's services (no gRPC rules: the gateway alone
    forwards to them) speak HTTP."""
    return service in FRONT_DOORS or not callers


def deployment(service, callers):
    probe = {"httpGet": {"path": "/healthz", "port": PORT}} if speaks_http(service, callers) \
        else {"grpc": {"port": PORT}}
    return {
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": service, "labels": labels(service)},
        "spec": {
            "replicas": 2,
            "selector": {"matchLabels": {"app.kubernetes.io/name": service}},
            "strategy": {"type": "RollingUpdate",
                         "rollingUpdate": {"maxUnavailable": 0, "maxSurge": 1}},
            "template": {
                "metadata": {"labels": labels(service),
                             "annotations": {"prometheus.io/scrape": "true",
                                             "prometheus.io/port": str(METRICS)}},
                "spec": {
                    "serviceAccountName": "sterling",
                    "automountServiceAccountToken": False,
                    "terminationGracePeriodSeconds": 30,
                    "securityContext": {"runAsNonRoot": True, "runAsUser": 10001,
                                        "runAsGroup": 10001, "fsGroup": 10001,
                                        "seccompProfile": {"type": "RuntimeDefault"}},
                    "topologySpreadConstraints": [
                        {"maxSkew": 1, "topologyKey": "topology.kubernetes.io/zone",
                         "whenUnsatisfiable": "ScheduleAnyway",
                         "labelSelector": {"matchLabels": {"app.kubernetes.io/name": service}}},
                    ],
                    "affinity": {"podAntiAffinity": {
                        "preferredDuringSchedulingIgnoredDuringExecution": [
                            {"weight": 100, "podAffinityTerm": {
                                "topologyKey": "kubernetes.io/hostname",
                                "labelSelector": {"matchLabels":
                                                  {"app.kubernetes.io/name": service}}}}]}},
                    "containers": [{
                        "name": service,
                        "image": f"sterling-{service}",
                        "imagePullPolicy": "IfNotPresent",
                        "env": [
                            {"name": "STERLING_SERVICE", "value": service},
                            {"name": "STERLING_LISTEN", "value": f"0.0.0.0:{PORT}"},
                            {"name": "STERLING_METRICS_ADDR", "value": f"0.0.0.0:{METRICS}"},
                            {"name": "STERLING_ADVERTISE_HOST",
                             "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}},
                        ],
                        "envFrom": [{"configMapRef": {"name": "sterling-config"}},
                                    {"secretRef": {"name": "sterling-secrets"}}],
                        "ports": [{"name": "api", "containerPort": PORT},
                                  {"name": "metrics", "containerPort": METRICS}],
                        "readinessProbe": {**probe, "periodSeconds": 5, "failureThreshold": 2},
                        "livenessProbe": {**probe, "periodSeconds": 10, "failureThreshold": 6,
                                          "initialDelaySeconds": 10},
                        "resources": {"requests": {"cpu": "100m", "memory": "128Mi"},
                                      "limits": {"memory": "512Mi"}},
                        "securityContext": {"allowPrivilegeEscalation": False,
                                            "readOnlyRootFilesystem": True,
                                            "capabilities": {"drop": ["ALL"]}},
                        "volumeMounts": [
                            {"name": "identity", "mountPath": "/identity", "readOnly": True},
                            {"name": "data", "mountPath": "/data"}],
                    }],
                    "volumes": [
                        {"name": "identity", "secret": {"secretName": "sterling-identity",
                                                        "defaultMode": 0o440}},
                        {"name": "data", "emptyDir": {"sizeLimit": "64Mi"}}],
                },
            },
        },
    }


def service_object(service):
    return {"apiVersion": "v1", "kind": "Service",
            "metadata": {"name": service, "labels": labels(service)},
            "spec": {"selector": {"app.kubernetes.io/name": service},
                     "ports": [{"name": "api", "port": PORT, "targetPort": "api"},
                               {"name": "metrics", "port": METRICS, "targetPort": "metrics"}]}}


def pdb(service):
    return {"apiVersion": "policy/v1", "kind": "PodDisruptionBudget",
            "metadata": {"name": service, "labels": labels(service)},
            "spec": {"maxUnavailable": 1,
                     "selector": {"matchLabels": {"app.kubernetes.io/name": service}}}}


def hpa(service):
    return {"apiVersion": "autoscaling/v2", "kind": "HorizontalPodAutoscaler",
            "metadata": {"name": service, "labels": labels(service)},
            "spec": {"scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment",
                                        "name": service},
                     "minReplicas": 2, "maxReplicas": 10,
                     "metrics": [{"type": "Resource", "resource": {
                         "name": "cpu", "target": {"type": "Utilization",
                                                   "averageUtilization": 70}}}]}}


def peer(name):
    return {"podSelector": {"matchLabels": {"app.kubernetes.io/name": name}}}


def network_policy(service, callers):
    sources = []
    if service in FRONT_DOORS or ANY in callers:
        sources = None  # anyone may connect to the API port
    else:
        # A public API service is called by the gateway alone.
        names = sorted({c for c in callers if c not in (OPERATOR, ANY)}
                       | ({"gateway"} if not callers else set()))
        sources = [peer(n) for n in names]
        if OPERATOR in callers:
            sources.append({"podSelector": {"matchLabels": {"sterling.dev/operator": "true"}}})
    api_rule = {"ports": [{"port": PORT, "protocol": "TCP"}]}
    if sources is not None:
        api_rule["from"] = sources
    prometheus = {"namespaceSelector": {},
                  "podSelector": {"matchLabels": {"app.kubernetes.io/name": "prometheus"}}}
    metrics_rule = {"from": [prometheus], "ports": [{"port": METRICS, "protocol": "TCP"}]}
    egress = [
        {"to": [{"podSelector": {"matchLabels": {"app.kubernetes.io/part-of": "sterling"}}}],
         "ports": [{"port": PORT, "protocol": "TCP"}]},
        {"to": [peer("nats")], "ports": [{"port": 4222, "protocol": "TCP"}]},
        {"to": [{"podSelector": {"matchLabels": {"app.kubernetes.io/name": "scylla"}}}],
         "ports": [{"port": 9042, "protocol": "TCP"}]},
        {"to": [{"namespaceSelector": {}, "podSelector": {"matchLabels": {"k8s-app": "kube-dns"}}}],
         "ports": [{"port": 53, "protocol": "UDP"}, {"port": 53, "protocol": "TCP"}]},
        {"to": [peer("jaeger")], "ports": [{"port": 4317, "protocol": "TCP"}]},
    ]
    if service in ("webhooks", "push"):
        # Customers' webhook URLs and the push gateway are on the internet.
        egress.append({"ports": [{"port": 443, "protocol": "TCP"}]})
    return {"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
            "metadata": {"name": service, "labels": labels(service)},
            "spec": {"podSelector": {"matchLabels": {"app.kubernetes.io/name": service}},
                     "policyTypes": ["Ingress", "Egress"],
                     "ingress": [api_rule, metrics_rule],
                     "egress": egress}}


GENERATED = "# Generated by deploy/k8s/generate.py from `sterling access`; edit the generator.\n"


def overlay_dev(services):
    """One replica of everything, the images `make images` builds, development secrets."""
    return GENERATED + yaml({
        "apiVersion": "kustomize.config.k8s.io/v1beta1", "kind": "Kustomization",
        "namespace": "sterling-dev",
        "resources": ["../../base", "namespace.yaml"],
        "images": [{"name": f"sterling-{s}", "newName": f"localhost/sterling-{s}",
                    "newTag": "dev"} for s in services]
        + [{"name": "nats", "newName": "docker.io/library/nats", "newTag": "2-alpine"}],
        "replicas": [{"name": s, "count": 1} for s in services],
        "patches": [
            {"target": {"kind": "HorizontalPodAutoscaler"},
             "patch": "- op: replace\n  path: /spec/minReplicas\n  value: 1\n"},
            {"target": {"kind": "ScyllaCluster"}, "path": "scylla-dev.yaml"},
            {"target": {"kind": "StatefulSet", "name": "nats"},
             "patch": "- op: replace\n  path: /spec/template/spec/topologySpreadConstraints/0/"
                      "whenUnsatisfiable\n  value: ScheduleAnyway\n"},
            {"target": {"kind": "ConfigMap", "name": "sterling-config"},
             "patch": "- op: replace\n  path: /data/STERLING_CASSANDRA_REPLICATION\n"
                      "  value: \"{'class': 'NetworkTopologyStrategy', 'dc1': 1}\"\n"},
        ],
        "secretGenerator": [
            {"name": "sterling-secrets", "literals": [
                "STERLING_CARD_API_SECRET=development-processor-secret",
                "STERLING_ACCOUNTS_PROCESSOR_SECRET=development-processor-secret"]},
            {"name": "sterling-identity", "files": ["identity.key=dev-identity.key"]},
        ],
    }) + "\n"


def overlay_prod(services):
    """Three replicas spread over zones, released images; secrets created beforehand."""
    return GENERATED + yaml({
        "apiVersion": "kustomize.config.k8s.io/v1beta1", "kind": "Kustomization",
        "namespace": "sterling",
        "resources": ["../../base", "namespace.yaml"],
        "images": [{"name": f"sterling-{s}", "newName": f"ghcr.io/sterling-bank/sterling-{s}",
                    "newTag": "0.1.0"} for s in services]
        + [{"name": "nats", "newName": "docker.io/library/nats", "newTag": "2.11.4"}],
        "replicas": [{"name": s, "count": 3} for s in services],
        "patches": [
            {"target": {"kind": "HorizontalPodAutoscaler"},
             "patch": "- op: replace\n  path: /spec/minReplicas\n  value: 3\n"},
            {"target": {"kind": "Deployment"}, "path": "resources-prod.yaml"},
        ],
    }) + "\n"


def main():
    access = json.load(sys.stdin)
    # The push sink stands in for the push gateway in development only.
    access.pop("push-sink", None)
    files = {}
    resources = []
    for service in sorted(access):
        callers = access[service]
        name = f"{service}.yaml"
        docs = [deployment(service, callers), service_object(service), pdb(service), hpa(service),
                network_policy(service, callers)]
        files[name] = "".join(f"---\n{yaml(d)}\n" for d in docs)
        resources.append(name)
    for shared in ("config.yaml", "nats.yaml", "scylla.yaml"):
        resources.append(shared)
    files["kustomization.yaml"] = (
        GENERATED
        + yaml({"apiVersion": "kustomize.config.k8s.io/v1beta1", "kind": "Kustomization",
                "labels": [{"pairs": {"app.kubernetes.io/part-of": "sterling"}}],
                "resources": resources}) + "\n")
    services = sorted(access)
    files["../overlays/dev/kustomization.yaml"] = overlay_dev(services)
    files["../overlays/prod/kustomization.yaml"] = overlay_prod(services)
    check = "--check" in sys.argv
    stale = []
    BASE.mkdir(exist_ok=True)
    for name, text in files.items():
        path = BASE / name
        if check:
            if not path.exists() or path.read_text() != text:
                stale.append(name)
        else:
            path.write_text(text)
    if stale:
        sys.exit("deploy/k8s/base is stale (run `sterling access | deploy/k8s/generate.py`): "
                 + ", ".join(stale))


if __name__ == "__main__":
    main()
