#!/usr/bin/env python3
"""Consistency checks on rendered Sluice manifests (`kubectl kustomize k8s/overlays/X`).

Schema validation (kubernetes-validate) says the YAML is well-formed Kubernetes; this says
it is *Sluice*: termination budgets add up, probes hit the endpoints SPEC.md names, the
metrics port stays off the public Service, pods run locked down.

    check_manifests.py RENDERED.yaml [...]   exit 1 listing every problem
    check_manifests.py --self-test RENDERED.yaml
                                             prove each check fires on a mutated copy
"""
import copy
import re
import sys

import yaml

# SPEC.md §4/§5/§8 numbers the manifests must honour.
API, WORKER = "sluice-api", "sluice-worker"
API_PORT, METRICS_PORT = 8080, 9090
SPEC_DEFAULT_SHUTDOWN = {API: 30.0, WORKER: 120.0}
SPEC_GRACE = {API: 35, WORKER: 125}
SPEC_API_PRESTOP = 5.0
# Time left after preStop + drain + shutdown budget for closing the pool and exiting
# before the kubelet's SIGKILL.
MIN_CUSHION = 5.0


def parse_duration(text, what):
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h)\s*", str(text))
    if not m:
        raise ValueError(f"{what}: cannot parse duration {text!r}")
    n, unit = float(m.group(1)), m.group(2)
    return n * {"ms": 0.001, "s": 1, "m": 60, "h": 3600}[unit]


def load(paths):
    docs = []
    for p in paths:
        with open(p) as f:
            docs.extend(d for d in yaml.safe_load_all(f) if d)
    return docs


def by_kind(docs, kind):
    return [d for d in docs if d.get("kind") == kind]


def find(docs, kind, name):
    for d in by_kind(docs, kind):
        if d.get("metadata", {}).get("name") == name:
            return d
    return None


class Checker:
    def __init__(self, docs):
        self.docs = docs
        self.problems = []

    def fail(self, msg):
        self.problems.append(msg)

    # --- helpers --------------------------------------------------------------------
    def env_of(self, container):
        """Effective environment: envFrom ConfigMaps first, then env (which wins)."""
        env = {}
        for src in container.get("envFrom", []) or []:
            ref = src.get("configMapRef")
            if ref:
                cm = find(self.docs, "ConfigMap", ref.get("name"))
                if cm:
                    env.update({k: str(v) for k, v in (cm.get("data") or {}).items()})
        for e in container.get("env", []) or []:
            if "value" in e:
                env[e["name"]] = str(e["value"])
        return env

    @staticmethod
    def port_number(container, port):
        if isinstance(port, int):
            return port
        for p in container.get("ports", []) or []:
            if p.get("name") == port:
                return p.get("containerPort")
        return None

    @staticmethod
    def prestop_seconds(container, where):
        pre = ((container.get("lifecycle") or {}).get("preStop")) or {}
        if not pre:
            return 0.0
        if "sleep" in pre:
            return float(pre["sleep"].get("seconds", 0))
        cmd = ((pre.get("exec") or {}).get("command")) or []
        joined = " ".join(str(c) for c in cmd)
        m = re.search(r"(?:^|[\s/])sleep\s+(\d+(?:\.\d+)?)", joined)
        if not m:
            raise ValueError(f"{where}: preStop {joined!r} is not a recognisable sleep")
        return float(m.group(1))

    def probe(self, name, container, kind, path, port, period=None, threshold=None):
        pr = container.get(kind)
        if not pr:
            self.fail(f"{name}: no {kind}")
            return
        http = pr.get("httpGet") or {}
        got_port = self.port_number(container, http.get("port"))
        if http.get("path") != path or got_port != port:
            self.fail(
                f"{name}: {kind} is {http.get('path')}:{got_port}, SPEC says {path}:{port}"
            )
        if period is not None and pr.get("periodSeconds", 10) != period:
            self.fail(f"{name}: {kind} periodSeconds {pr.get('periodSeconds', 10)} != {period}")
        if threshold is not None and pr.get("failureThreshold", 3) != threshold:
            self.fail(
                f"{name}: {kind} failureThreshold {pr.get('failureThreshold', 3)} != {threshold}"
            )

    def security(self, name, pod):
        psc = pod.get("securityContext") or {}
        if ((psc.get("seccompProfile") or {}).get("type")) != "RuntimeDefault":
            self.fail(f"{name}: pod securityContext.seccompProfile.type is not RuntimeDefault")
        if pod.get("automountServiceAccountToken") is not False:
            sa = find(self.docs, "ServiceAccount", pod.get("serviceAccountName", "default"))
            if not sa or sa.get("automountServiceAccountToken") is not False:
                self.fail(f"{name}: service account token is mounted")
        for c in pod.get("containers", []) + (pod.get("initContainers") or []):
            where = f"{name}/{c.get('name')}"
            sc = c.get("securityContext") or {}
            non_root = sc.get("runAsNonRoot", psc.get("runAsNonRoot"))
            uid = sc.get("runAsUser", psc.get("runAsUser"))
            if non_root is not True:
                self.fail(f"{where}: runAsNonRoot is not true")
            if uid is not None and int(uid) == 0:
                self.fail(f"{where}: runs as uid 0")
            if sc.get("readOnlyRootFilesystem") is not True:
                self.fail(f"{where}: readOnlyRootFilesystem is not true")
            if sc.get("allowPrivilegeEscalation") is not False:
                self.fail(f"{where}: allowPrivilegeEscalation is not false")
            if "ALL" not in (((sc.get("capabilities") or {}).get("drop")) or []):
                self.fail(f"{where}: capabilities do not drop ALL")
            res = c.get("resources") or {}
            if not (res.get("requests") or {}).get("memory") or not (
                res.get("requests") or {}
            ).get("cpu"):
                self.fail(f"{where}: missing cpu/memory requests")
            if not (res.get("limits") or {}).get("memory"):
                self.fail(f"{where}: missing memory limit")

    # --- checks ---------------------------------------------------------------------
    def deployment(self, name, binary):
        dep = find(self.docs, "Deployment", name)
        if not dep:
            self.fail(f"Deployment {name} missing")
            return
        meta_labels = dep.get("metadata", {}).get("labels") or {}
        tmpl = dep["spec"]["template"]
        labels = tmpl.get("metadata", {}).get("labels") or {}
        for lbls, where in ((meta_labels, "metadata"), (labels, "pod template")):
            if lbls.get("app.kubernetes.io/name") != name:
                self.fail(f"{name}: {where} label app.kubernetes.io/name != {name}")
            if lbls.get("app.kubernetes.io/part-of") != "sluice":
                self.fail(f"{name}: {where} label app.kubernetes.io/part-of != sluice")
        ann = tmpl.get("metadata", {}).get("annotations") or {}
        if (
            ann.get("prometheus.io/scrape") != "true"
            or str(ann.get("prometheus.io/port")) != str(METRICS_PORT)
            or ann.get("prometheus.io/path", "/metrics") != "/metrics"
        ):
            self.fail(f"{name}: prometheus.io scrape annotations missing or not port 9090 /metrics")
        pod = tmpl["spec"]
        self.security(name, pod)
        containers = pod.get("containers") or []
        main = next((c for c in containers if binary in (c.get("command") or [])[:1]), None)
        if not main:
            self.fail(f"{name}: no container with command [{binary!r}]")
            return
        roll = (dep["spec"].get("strategy") or {}).get("rollingUpdate") or {}
        if str(roll.get("maxUnavailable")) != "0":
            self.fail(f"{name}: rollingUpdate.maxUnavailable is {roll.get('maxUnavailable')}, want 0")

        env = self.env_of(main)
        try:
            shutdown = parse_duration(
                env.get("SLUICE_SHUTDOWN_TIMEOUT", f"{SPEC_DEFAULT_SHUTDOWN[name]}s"),
                f"{name} SLUICE_SHUTDOWN_TIMEOUT",
            )
            drain = (
                parse_duration(env.get("SLUICE_DRAIN_DELAY", "0s"), f"{name} SLUICE_DRAIN_DELAY")
                if name == API
                else 0.0
            )
            prestop = self.prestop_seconds(main, name)
        except ValueError as e:
            self.fail(str(e))
            return
        grace = pod.get("terminationGracePeriodSeconds", 30)
        need = prestop + drain + shutdown + MIN_CUSHION
        if grace < need:
            self.fail(
                f"{name}: terminationGracePeriodSeconds {grace} < preStop {prestop:g}s + drain "
                f"{drain:g}s + SLUICE_SHUTDOWN_TIMEOUT {shutdown:g}s + cushion {MIN_CUSHION:g}s"
            )
        if grace != SPEC_GRACE[name]:
            self.fail(f"{name}: terminationGracePeriodSeconds {grace}, SPEC.md says {SPEC_GRACE[name]}")

        if name == API:
            if prestop < SPEC_API_PRESTOP:
                self.fail(f"{name}: preStop sleep {prestop:g}s, SPEC.md says {SPEC_API_PRESTOP:g}s")
            self.probe(name, main, "readinessProbe", "/health/ready", API_PORT, 2, 1)
            self.probe(name, main, "livenessProbe", "/health/live", API_PORT)
        else:
            if shutdown != SPEC_DEFAULT_SHUTDOWN[WORKER]:
                self.fail(f"{name}: SLUICE_SHUTDOWN_TIMEOUT {shutdown:g}s, SPEC.md says 120s")
            self.probe(name, main, "readinessProbe", "/health/ready", METRICS_PORT)
            self.probe(name, main, "livenessProbe", "/health/live", METRICS_PORT)

    def services(self):
        api = find(self.docs, "Deployment", API)
        api_labels = (api or {}).get("spec", {}).get("template", {}).get("metadata", {}).get(
            "labels"
        ) or {}
        public = []
        for svc in by_kind(self.docs, "Service"):
            sel = svc["spec"].get("selector") or {}
            if not sel or any(api_labels.get(k) != v for k, v in sel.items()):
                continue
            if svc["spec"].get("clusterIP") == "None":
                continue  # headless: per-pod DNS for scrapers, no load-balanced VIP
            public.append(svc)
            for p in svc["spec"].get("ports") or []:
                if METRICS_PORT in (p.get("port"), p.get("targetPort")) or p.get(
                    "targetPort"
                ) == "metrics":
                    self.fail(
                        f"Service {svc['metadata']['name']} exposes the metrics port "
                        f"{METRICS_PORT} of {API} (SPEC §2: never behind the public Service)"
                    )
        if not any(
            p.get("port") == API_PORT for s in public for p in s["spec"].get("ports") or []
        ):
            self.fail(f"no Service exposes {API} on port {API_PORT}")

    def others(self):
        job = next(
            (
                j
                for j in by_kind(self.docs, "Job")
                if any(
                    (c.get("command") or []) + (c.get("args") or []) == ["sluicectl", "migrate"]
                    for c in j["spec"]["template"]["spec"].get("containers", [])
                )
            ),
            None,
        )
        if not job:
            self.fail("no Job runs `sluicectl migrate`")
        else:
            self.security(f"Job {job['metadata']['name']}", job["spec"]["template"]["spec"])
        for name in (API, WORKER):
            dep = find(self.docs, "Deployment", name)
            if not dep:
                continue
            sel = dep["spec"]["selector"]["matchLabels"]
            if not any(
                (p["spec"].get("selector") or {}).get("matchLabels") == sel
                for p in by_kind(self.docs, "PodDisruptionBudget")
            ):
                self.fail(f"no PodDisruptionBudget selects {name}")
        if not any(
            h.get("apiVersion") == "autoscaling/v2"
            and h["spec"]["scaleTargetRef"].get("name") == API
            for h in by_kind(self.docs, "HorizontalPodAutoscaler")
        ):
            self.fail(f"no autoscaling/v2 HorizontalPodAutoscaler for {API}")
        for cm in by_kind(self.docs, "ConfigMap"):
            for key in cm.get("data") or {}:
                if key in ("DATABASE_URL", "SLUICE_API_TOKENS"):
                    self.fail(f"ConfigMap {cm['metadata']['name']} holds secret {key}")

    def run(self):
        self.deployment(API, "sluice-api")
        self.deployment(WORKER, "sluice-worker")
        self.services()
        self.others()
        return self.problems


# --- self-test: each mutation must be caught, with a message naming the problem --------
def _dep(docs, name):
    return find(docs, "Deployment", name)


def _container(docs, name):
    return _dep(docs, name)["spec"]["template"]["spec"]["containers"][0]


def _set_env(docs, name, key, value):
    c = _container(docs, name)
    c["env"] = [e for e in c.get("env") or [] if e["name"] != key] + [
        {"name": key, "value": value}
    ]


def _mut_grace(d):
    _dep(d, API)["spec"]["template"]["spec"]["terminationGracePeriodSeconds"] = 30


def _mut_worker_budget(d):
    _set_env(d, WORKER, "SLUICE_SHUTDOWN_TIMEOUT", "3m")


def _mut_drain(d):
    _set_env(d, API, "SLUICE_DRAIN_DELAY", "10s")


def _mut_ready_path(d):
    _container(d, API)["readinessProbe"]["httpGet"]["path"] = "/healthz"


def _mut_ready_period(d):
    _container(d, API)["readinessProbe"]["periodSeconds"] = 10


def _mut_worker_probe_port(d):
    _container(d, WORKER)["livenessProbe"]["httpGet"]["port"] = 8080


def _mut_metrics_in_service(d):
    find(d, "Service", API)["spec"]["ports"].append(
        {"name": "metrics", "port": 9090, "targetPort": 9090}
    )


def _mut_root(d):
    _container(d, API)["securityContext"]["readOnlyRootFilesystem"] = False


def _mut_caps(d):
    del _container(d, WORKER)["securityContext"]["capabilities"]


def _mut_no_prestop(d):
    del _container(d, API)["lifecycle"]


def _mut_surge_down(d):
    _dep(d, API)["spec"]["strategy"]["rollingUpdate"]["maxUnavailable"] = 1


MUTATIONS = [
    (_mut_grace, "terminationGracePeriodSeconds 30 <"),
    (_mut_worker_budget, "sluice-worker: terminationGracePeriodSeconds 125 <"),
    (_mut_drain, "drain 10s"),
    (_mut_ready_path, "readinessProbe is /healthz"),
    (_mut_ready_period, "periodSeconds 10 != 2"),
    (_mut_worker_probe_port, "livenessProbe is /health/live:8080"),
    (_mut_metrics_in_service, "exposes the metrics port"),
    (_mut_root, "readOnlyRootFilesystem"),
    (_mut_caps, "drop ALL"),
    (_mut_no_prestop, "preStop sleep 0s"),
    (_mut_surge_down, "maxUnavailable is 1"),
]


def self_test(docs):
    ok = True
    base = Checker(copy.deepcopy(docs)).run()
    if base:
        print("self-test: the unmutated manifests already fail:", *base, sep="\n  ")
        return False
    for mutate, expect in MUTATIONS:
        d = copy.deepcopy(docs)
        mutate(d)
        problems = Checker(d).run()
        if not any(expect in p for p in problems):
            ok = False
            print(f"self-test: {mutate.__name__} not caught (want {expect!r}), got {problems}")
    print(f"self-test: {len(MUTATIONS)} mutations, {'all caught' if ok else 'SOME MISSED'}")
    return ok


def main(argv):
    if len(argv) >= 2 and argv[0] == "--self-test":
        return 0 if self_test(load(argv[1:])) else 1
    if not argv:
        print(__doc__, file=sys.stderr)
        return 2
    problems = Checker(load(argv)).run()
    for p in problems:
        print(f"FAIL {p}")
    if problems:
        return 1
    print(f"check_manifests: {', '.join(argv)}: ok")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
