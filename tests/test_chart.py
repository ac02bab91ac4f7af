"""The Helm chart's copies of generated files have not drifted, and its values schema holds.

No cluster here. The CRD templates are rendered from charts/ekko/files/crds/, a byte copy of
crds/ refreshed by `make chart-crds`; the dashboard ConfigMap ships a copy of
docs/dashboards/ekko.json. When helm is on PATH (or in the e2e tools cache) the chart is also
rendered, to check that each rendered CRD is its source plus the keep annotation and nothing
else.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

REPO = Path(__file__).resolve().parent.parent
CHART = REPO / "charts" / "ekko"
KEEP_LINE = "    helm.sh/resource-policy: keep\n"
FIX = "run `make chart-crds` to refresh the chart's copies"


def _schema() -> dict[str, Any]:
    return json.loads((CHART / "values.schema.json").read_text())  # type: ignore[no-any-return]


def _values() -> dict[str, Any]:
    return yaml.safe_load((CHART / "values.yaml").read_text())  # type: ignore[no-any-return]


def _errors(values: dict[str, Any]) -> list[str]:
    validator = jsonschema.Draft7Validator(_schema())
    return [
        f"{'.'.join(map(str, e.absolute_path))}: {e.message}" for e in validator.iter_errors(values)
    ]


# -- copies --------------------------------------------------------------------------------


def test_chart_crds_are_byte_copies_of_crds() -> None:
    source = {p.name: p.read_bytes() for p in (REPO / "crds").glob("*.yaml")}
    copies = {p.name: p.read_bytes() for p in (CHART / "files" / "crds").glob("*.yaml")}
    assert source, "crds/ is empty"
    assert sorted(copies) == sorted(source), FIX
    for name, text in source.items():
        assert copies[name] == text, f"charts/ekko/files/crds/{name} drifted: {FIX}"


def test_chart_dashboard_is_a_copy_of_docs() -> None:
    docs = (REPO / "docs" / "dashboards" / "ekko.json").read_bytes()
    assert (CHART / "files" / "dashboards" / "ekko.json").read_bytes() == docs, FIX


def _exported_metrics() -> set[str]:
    """Every series name the operator, an agent and its update node export (histograms and
    counters also under their suffixed names, samples or not)."""
    from prometheus_client import CollectorRegistry

    from ekko.agent.engines import ScoreMetrics
    from ekko.agent.metrics import AgentMetrics
    from ekko.operator.metrics import REGISTRY
    from ekko.updates.wire import UpdateMetrics

    agent = AgentMetrics().registry
    ScoreMetrics(agent).declare("m")
    updates = CollectorRegistry()
    UpdateMetrics(updates).declare_model("m")
    known: set[str] = set()
    for registry in (REGISTRY, agent, updates):
        for family in registry.collect():
            known.add(family.name)
            known.update(s.name for s in family.samples)
    return known | {
        f"{n}_{suffix}" for n in list(known) for suffix in ("bucket", "count", "sum", "total")
    }


def test_dashboard_queries_only_metrics_ekko_exports() -> None:
    known = _exported_metrics()
    dashboard = json.loads((REPO / "docs" / "dashboards" / "ekko.json").read_text())
    exprs = [t["expr"] for p in dashboard["panels"] for t in p.get("targets", [])]
    assert exprs
    used = {m for e in exprs for m in re.findall(r"\bekko_[a-z_]+", e)}
    assert {"ekko_update_lag_seconds_bucket", "ekko_update_paired_samples_total"} <= used
    assert used <= known, f"the dashboard queries unknown metrics: {sorted(used - known)}"


# -- values and schema ---------------------------------------------------------------------


def test_default_values_satisfy_the_schema() -> None:
    jsonschema.Draft7Validator.check_schema(_schema())
    assert _errors(_values()) == []


def _with(path: str, value: Any) -> dict[str, Any]:
    values = _values()
    *parents, leaf = path.split(".")
    node = values
    for key in parents:
        node = node[key]
    node[leaf] = value
    return values


@pytest.mark.parametrize(
    ("path", "value", "message"),
    [
        ("operator.replicas", 0, "operator.replicas: 0 is less than the minimum of 1"),
        ("image.tag", 0.1, "image.tag: 0.1 is not of type 'string'"),
        ("operator.resources.requests.cpu", "-100m", "operator.resources.requests.cpu"),
        ("operator.resources.limits.memory", -1, "operator.resources.limits.memory"),
        ("operator.watchNamespaces", ["Team_A"], "operator.watchNamespaces.0"),
        ("image.pullPolicy", "Sometimes", "image.pullPolicy"),
        ("operator.metricsPort", 0, "operator.metricsPort"),
        ("operator.prometheusUrl", "prometheus:9090", "operator.prometheusUrl"),
        ("metrics.serviceMonitor.interval", "30", "metrics.serviceMonitor.interval"),
        ("operator.replica", 1, "Additional properties are not allowed ('replica' was unexpected)"),
    ],
)
def test_schema_rejects_bad_values(path: str, value: Any, message: str) -> None:
    errors = _errors(_with(path, value))
    assert any(message in e for e in errors), errors


def test_every_value_is_commented() -> None:
    """Each key has a comment right above it, or sits inside a commented block of plain data."""
    blocks = {"resources", "livenessProbe", "readinessProbe", "labels"}  # data, not settings
    missing = []
    previous = ""
    stack: list[tuple[int, str]] = []
    for number, line in enumerate((CHART / "values.yaml").read_text().splitlines(), 1):
        match = re.match(r"^( *)([A-Za-z_][\w.-]*):", line)
        if match:
            indent, key = len(match.group(1)), match.group(2)
            while stack and stack[-1][0] >= indent:
                stack.pop()
            inside_block = any(k in blocks for _, k in stack)
            commented = previous.lstrip().startswith("#") or "#" in line.split(":", 1)[1]
            if not (commented or inside_block):
                missing.append(f"values.yaml:{number}: {key}")
            stack.append((indent, key))
        if line.strip():
            previous = line
    assert missing == []


# -- rendering (needs the helm binary, not a cluster) ---------------------------------------


def _helm() -> str | None:
    found = shutil.which("helm")
    if found:
        return found
    cached = sorted(Path.home().glob(".cache/ekko/tools/helm-*/bin/helm"))
    return str(cached[-1]) if cached else None


def _render(*args: str) -> list[dict[str, Any]]:
    helm = _helm()
    if helm is None:
        pytest.skip("helm not found (python -m e2e.cluster build helm)")
    out = subprocess.run(
        [helm, "template", "ekko", str(CHART), "--namespace", "ekko-system", *args],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    ).stdout
    return [d for d in yaml.safe_load_all(out) if d]


def _rendered_crd_texts(*args: str) -> dict[str, str]:
    helm = _helm()
    if helm is None:
        pytest.skip("helm not found (python -m e2e.cluster build helm)")
    out = subprocess.run(
        [helm, "template", "ekko", str(CHART), "--namespace", "ekko-system", *args,
         "--show-only", "templates/crds/crds.yaml"],
        capture_output=True, text=True, check=True, timeout=60,
    ).stdout  # fmt: skip
    docs = out.split("\n---\n")
    texts = {}
    for doc in docs:
        body = doc.split("\n", 1)[1] if doc.startswith("---\n# Source:") else doc
        if body.startswith("# Source:"):
            body = body.split("\n", 1)[1]
        match = re.search(r"^  name: (\S+)$", body, re.M)
        if match:
            texts[match.group(1)] = body
    return texts


def test_rendered_crds_are_the_sources_plus_the_keep_annotation() -> None:
    sources = {
        yaml.safe_load(p.read_text())["metadata"]["name"]: p.read_text()
        for p in (REPO / "crds").glob("*.yaml")
    }
    kept = _rendered_crd_texts()
    assert sorted(kept) == sorted(sources)
    for name, text in kept.items():
        assert text.count(KEEP_LINE) == 1, name
        assert text.replace(KEEP_LINE, "", 1).rstrip("\n") == sources[name].rstrip("\n"), name
    plain = _rendered_crd_texts("--set", "crds.keep=false")
    for name, text in plain.items():
        assert text.rstrip("\n") == sources[name].rstrip("\n"), name
    kinds = {d["kind"] for d in _render("--set", "crds.install=false")}
    assert "CustomResourceDefinition" not in kinds


def test_monitoring_objects_need_their_api() -> None:
    enabled = ["--set", "metrics.serviceMonitor.enabled=true",
               "--set", "metrics.prometheusRule.enabled=true"]  # fmt: skip
    kinds = {d["kind"] for d in _render(*enabled)}
    assert not kinds & {"ServiceMonitor", "PrometheusRule"}
    apis = ["--api-versions", "monitoring.coreos.com/v1/ServiceMonitor",
            "--api-versions", "monitoring.coreos.com/v1/PrometheusRule"]  # fmt: skip
    kinds = {d["kind"] for d in _render(*enabled, *apis)}
    assert {"ServiceMonitor", "PrometheusRule"} <= kinds


def test_operator_pod_is_locked_down() -> None:
    deployment = next(d for d in _render() if d["kind"] == "Deployment")
    spec = deployment["spec"]["template"]["spec"]
    assert deployment["spec"]["replicas"] == 1
    (container,) = spec["containers"]
    context = container["securityContext"]
    assert context["readOnlyRootFilesystem"] is True
    assert context["allowPrivilegeEscalation"] is False
    assert context["capabilities"] == {"drop": ["ALL"]}
    assert spec["securityContext"]["runAsNonRoot"] is True
    assert spec["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    assert container["resources"]["limits"] and container["resources"]["requests"]
    assert container["args"][:2] == ["operator", "--all-namespaces"]
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert env["EKKO_IMAGE"] == container["image"]
    assert not any(a.startswith("--prometheus-url") for a in container["args"])
    scoped_args = ["--set", "operator.watchNamespaces={a,b}",
                   "--set", "operator.prometheusUrl=http://prom:9090"]  # fmt: skip
    scoped = next(d for d in _render(*scoped_args) if d["kind"] == "Deployment")
    (container,) = scoped["spec"]["template"]["spec"]["containers"]
    assert "--namespace=a" in container["args"] and "--namespace=b" in container["args"]
    assert "--prometheus-url=http://prom:9090" in container["args"]


RFC1123_PATH = r"(/[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*)+"


def _kopf_webhooks() -> list[dict[str, Any]]:
    """What kopf would register for the operator's validators, pointed at a Service."""
    from ekko.operator.webhook import CONFIGURATION, webhooks

    assert CONFIGURATION  # the managed name, unused by the chart
    return webhooks({"service": {"name": "svc", "namespace": "ns", "path": ""}})


def test_the_charts_webhook_calls_every_operator_validator_through_its_service() -> None:
    docs = _render("--set", "operator.watchNamespaces={team-a}")
    config = next(d for d in docs if d["kind"] == "ValidatingWebhookConfiguration")
    expected = {
        w["clientConfig"]["service"]["path"]: (w["name"], w["rules"], w["failurePolicy"])
        for w in _kopf_webhooks()
    }
    rendered = {}
    for hook in config["webhooks"]:
        service = hook["clientConfig"]["service"]
        assert service["name"] == "ekko-webhook" and service["namespace"] == "ekko-system"
        assert "url" not in hook["clientConfig"]
        assert hook["namespaceSelector"]["matchExpressions"][0]["values"] == ["team-a"]
        rules = [{k: v for k, v in r.items() if k != "scope"} for r in hook["rules"]]
        rendered[service["path"]] = (hook["name"], rules, hook["failurePolicy"])
        # The API server takes only RFC 1123 segments in a Service path (it refused kopf's
        # default handler ids, function names with underscores).
        assert re.fullmatch(RFC1123_PATH, service["path"]), service["path"]
    expected = {
        path: (name, [{k: v for k, v in r.items() if k != "scope"} for r in rules], policy)
        for path, (name, rules, policy) in expected.items()
    }
    assert rendered == expected
    service = next(
        d for d in docs if d["kind"] == "Service" and d["metadata"]["name"] == "ekko-webhook"
    )
    assert service["spec"]["ports"][0]["port"] == config["webhooks"][0]["clientConfig"][
        "service"
    ].get("port", 443)


def test_the_charts_webhook_certificate_is_served_and_trusted() -> None:
    import base64

    from cryptography import x509

    docs = _render()
    secret = next(
        d for d in docs if d["kind"] == "Secret" and d["metadata"]["name"] == "ekko-webhook-tls"
    )
    config = next(d for d in docs if d["kind"] == "ValidatingWebhookConfiguration")
    data = {k: base64.b64decode(v) for k, v in secret["data"].items()}
    ca = x509.load_pem_x509_certificate(data["ca.crt"])
    cert = x509.load_pem_x509_certificate(data["tls.crt"])
    cert.verify_directly_issued_by(ca)
    sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert "ekko-webhook.ekko-system.svc" in sans.get_values_for_type(x509.DNSName)
    for hook in config["webhooks"]:
        assert base64.b64decode(hook["clientConfig"]["caBundle"]) == data["ca.crt"]
    # The operator serves it from the mounted Secret and leaves the registration to the chart.
    deployment = next(d for d in docs if d["kind"] == "Deployment")
    pod = deployment["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    assert "--webhook-unmanaged" in container["args"]
    cert_dir = next(a for a in container["args"] if a.startswith("--webhook-cert-dir="))
    mount = next(m for m in container["volumeMounts"] if m["name"] == "webhook-tls")
    assert cert_dir.split("=", 1)[1] == mount["mountPath"]
    volume = next(v for v in pod["volumes"] if v["name"] == "webhook-tls")
    assert volume["secret"]["secretName"] == "ekko-webhook-tls"
    # No webhook: no certificate, no registration, no flags.
    off = _render("--set", "webhook.enabled=false")
    assert not {"Secret", "ValidatingWebhookConfiguration"} & {d["kind"] for d in off}


def test_cert_manager_without_its_api_fails_with_a_clear_message() -> None:
    helm = _helm()
    if helm is None:
        pytest.skip("helm not found (python -m e2e.cluster build helm)")
    result = subprocess.run(
        [helm, "template", "ekko", str(CHART), "--set", "webhook.certManager.enabled=true"],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert result.returncode != 0
    assert "install cert-manager first" in result.stderr, result.stderr
    docs = _render(
        "--set", "webhook.certManager.enabled=true", "--api-versions", "cert-manager.io/v1"
    )
    kinds = {d["kind"] for d in docs}
    assert {"Certificate", "Issuer"} <= kinds and "Secret" not in kinds
    config = next(d for d in docs if d["kind"] == "ValidatingWebhookConfiguration")
    assert config["metadata"]["annotations"]["cert-manager.io/inject-ca-from"] == (
        "ekko-system/ekko-webhook"
    )


def test_alert_rules_query_only_metrics_ekko_exports() -> None:
    known = _exported_metrics()
    apis = ["--api-versions", "monitoring.coreos.com/v1/PrometheusRule"]
    (rule,) = [
        d
        for d in _render("--set", "metrics.prometheusRule.enabled=true", *apis)
        if d["kind"] == "PrometheusRule"
    ]
    exprs = [r["expr"] for g in rule["spec"]["groups"] for r in g["rules"]]
    used = {m for e in exprs for m in re.findall(r"\bekko_[a-z_]+", e)}
    assert {"ekko_update_lag_seconds_bucket", "ekko_update_paired_samples_total"} <= used
    assert used <= known, f"the alert rules query unknown metrics: {sorted(used - known)}"


def test_more_operator_replicas_are_hot_standbys_replaced_one_at_a_time() -> None:
    def deployment(*values: str) -> dict[str, Any]:
        return next(d for d in _render(*values) if d["kind"] == "Deployment")

    one, three = deployment(), deployment("--set", "operator.replicas=3")
    assert one["spec"]["strategy"] == {"type": "Recreate"}
    assert three["spec"]["replicas"] == 3
    assert three["spec"]["strategy"] == {
        "type": "RollingUpdate",
        "rollingUpdate": {"maxUnavailable": 1, "maxSurge": 0},
    }
    for d in (one, three):
        args = d["spec"]["template"]["spec"]["containers"][0]["args"]
        assert "--peering" in args and "--priority=auto" in args


def test_kopf_peering_crds_can_be_left_to_another_release() -> None:
    def crds(*values: str) -> set[str]:
        return {
            d["metadata"]["name"]
            for d in _render(*values)
            if d["kind"] == "CustomResourceDefinition"
        }

    every = crds()
    assert {"kopfpeerings.kopf.dev", "clusterkopfpeerings.kopf.dev"} <= every
    without = crds("--set", "crds.kopfPeering=false")
    assert without == {n for n in every if not n.endswith(".kopf.dev")}
    assert "updatestreams.ekko.dev" in without
