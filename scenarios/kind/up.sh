#!/usr/bin/env bash
#
# up.sh WORK: builds the federation WORK/plan/ describes out of kind clusters
# (format in README.md): images, clusters with zoned workers, a root CA and
# one intermediate per cluster under WORK/trust/, Meshfed, the sample
# workloads of namespace shop (labelled meshfed.io/inject=enabled, so the
# injector's webhook adds their sidecars; Services target the apps' own
# ports, and inbound is intercepted transparently), the exports, the
# FailoverPolicies and the links; then waits for `meshctl check` to pass and
# prints "federation ready".
#
# Progress goes to stderr. On failure it says which step failed and leaves
# the clusters as they are: down.sh WORK removes them.
#
# Environment: MESHCTL (default: meshctl on PATH), MESHFED_IMAGE_REGISTRY
# (meshfed.local), MESHFED_IMAGE_TAG (scenario), MESHFED_SKIP_BUILD=1 to use
# images already built.

set -euo pipefail

HERE=$(dirname "${BASH_SOURCE[0]}")
# shellcheck source-path=SCRIPTDIR source=lib.sh
source "$HERE/lib.sh"

readonly USAGE="usage: up.sh WORK   (WORK/plan/ written by meshctl scenario run --provider kind; see README.md)"
# How long one Deployment may take to roll out, the nodes to become ready,
# and the federation to pass meshctl check.
readonly ROLLOUT_TIMEOUT=180s
readonly CHECK_TIMEOUT_SECONDS=180
# The apps' ports and the client pods' explicit upstreams, as the runner
# expects them.
readonly API_PORT=8080 ECHO_PORT=9000 STATS_PORT=8081
readonly API_UPSTREAM=15001 ECHO_UPSTREAM=15002

[[ $# -eq 1 ]] || usage_error "up.sh takes exactly one argument" "$USAGE"
WORK=$1
plan_load "$WORK" || usage_error "write the plan first" "$USAGE"
((${#CLUSTERS[@]} > 0)) || die "$PLAN/clusters names no cluster: nothing to bring up"

MESHCTL=${MESHCTL:-meshctl}
REGISTRY=${MESHFED_IMAGE_REGISTRY:-meshfed.local}
TAG=${MESHFED_IMAGE_TAG:-scenario}
APP_IMAGE=$REGISTRY/meshctl:$TAG
TRUST_DOMAIN=$(setting TRUST_DOMAIN mesh.local)
LEASE_TTL=$(setting LEASE_TTL)
LEAF_TTL=$(setting LEAF_TTL)
[[ $TRUST_DOMAIN =~ ^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$ ]] || die "$PLAN/settings: TRUST_DOMAIN '$TRUST_DOMAIN' is not a trust domain"
[[ -z $LEASE_TTL || $LEASE_TTL =~ ^[1-9][0-9]{0,3}$ ]] || die "$PLAN/settings: LEASE_TTL '$LEASE_TTL' is not a number of seconds"
[[ -z $LEAF_TTL || $LEAF_TTL =~ ^[1-9][0-9]*$ ]] || die "$PLAN/settings: LEAF_TTL '$LEAF_TTL' is not a number of seconds"

# The rest of the plan, checked before anything is built.
LINKS=()
while read -r cluster peer extra; do
	[[ -z $extra ]] || die "$PLAN/links: '$cluster $peer $extra': expected CLUSTER PEER"
	plan_cluster "$cluster"
	plan_cluster "$peer"
	[[ $cluster != "$peer" ]] || die "$PLAN/links: cluster $cluster cannot link to itself"
	LINKS+=("$cluster $peer")
done < <(plan_lines "$PLAN/links")
EXPORTED=()
while read -r cluster service extra; do
	[[ -z $extra ]] || die "$PLAN/exported: '$cluster $service $extra': expected CLUSTER SERVICE"
	plan_cluster "$cluster"
	[[ $service == api || $service == echo ]] || die "$PLAN/exported: service '$service' is neither api nor echo"
	EXPORTED+=("$cluster $service")
done < <(plan_lines "$PLAN/exported")
declare -A CALLERS=()
while read -r cluster caller extra; do
	[[ -z $extra ]] || die "$PLAN/callers: '$cluster $caller $extra': expected CLUSTER CALLER"
	plan_cluster "$cluster"
	is_label "$caller" || die "$PLAN/callers: caller '$caller' is not a DNS label"
	[[ ! $caller =~ ^(api|echo|client|api-[a-d])$ ]] || die "$PLAN/callers: caller '$caller' is the name of a sample workload"
	CALLERS[$cluster]+=" $caller"
done < <(plan_lines "$PLAN/callers")
declare -A VERSIONS=()
while read -r cluster version extra; do
	[[ -z $extra ]] || die "$PLAN/versions: '$cluster $version $extra': expected CLUSTER VERSION"
	plan_cluster "$cluster"
	[[ $version =~ ^v[0-9]{1,3}$ ]] || die "$PLAN/versions: version '$version' is not v followed by a number"
	VERSIONS[$cluster]+=" $version"
done < <(plan_lines "$PLAN/versions")

# --- 1. tools -----------------------------------------------------------------

missing=0
need docker "$HOW_DOCKER" || missing=1
need kind "$HOW_KIND" || missing=1
need kubectl "$HOW_KUBECTL" || missing=1
if command -v docker >/dev/null 2>&1 && ! docker info >/dev/null 2>&1; then
	log "missing: the Docker engine does not answer (docker info failed): start it, or check DOCKER_HOST and your access to its socket"
	missing=1
fi
if ! "$MESHCTL" --version >/dev/null 2>&1; then
	log "missing: meshctl ('$MESHCTL') does not run: build it (cargo build -p meshctl) and put it on PATH, or set MESHCTL"
	missing=1
fi
((missing == 0)) || exit 2

STEP=
PREVIOUS_CONTEXT=$(kubectl config current-context 2>/dev/null || true)

step() {
	STEP=$1
	log "$1"
}

on_exit() {
	local rc=$?
	# kind create makes each new cluster the current context; put it back.
	if [[ -n $PREVIOUS_CONTEXT ]]; then
		kubectl config use-context "$PREVIOUS_CONTEXT" >/dev/null 2>&1 || true
	fi
	if ((rc != 0)) && [[ -n $STEP ]]; then
		log "up.sh failed while: $STEP (exit $rc)"
		log "the clusters are left as they are; remove them with: $HERE/down.sh $WORK"
	fi
}
trap on_exit EXIT

existing=$(kind get clusters 2>/dev/null) || die "kind get clusters failed: is Docker running?"
for c in "${CLUSTERS[@]}"; do
	if grep -qx "$(kind_name "$c")" <<<"$existing"; then
		die "kind cluster $(kind_name "$c") already exists (left by an earlier run?): remove it with down.sh, meshctl scenario clean, or kind delete cluster --name $(kind_name "$c")"
	fi
done

# --- 2. images ----------------------------------------------------------------

ROOT=$(cd "$HERE/../.." && pwd)
if [[ ${MESHFED_SKIP_BUILD:-} == 1 ]]; then
	step "MESHFED_SKIP_BUILD=1: using the images already built"
	for t in "${MESHFED_IMAGES[@]}"; do
		docker image inspect "$REGISTRY/$t:$TAG" >/dev/null 2>&1 ||
			die "image $REGISTRY/$t:$TAG is not built (MESHFED_SKIP_BUILD=1 needs all six; unset it to build them)"
	done
else
	for t in "${MESHFED_IMAGES[@]}"; do
		step "building image $REGISTRY/$t:$TAG from $ROOT"
		# The Dockerfile uses cache mounts: BuildKit.
		(cd "$ROOT" && DOCKER_BUILDKIT=1 docker build -f deploy/Dockerfile --target "$t" -t "$REGISTRY/$t:$TAG" .) >&2
	done
fi
IMAGES=()
for t in "${MESHFED_IMAGES[@]}"; do
	IMAGES+=("$REGISTRY/$t:$TAG")
done

# --- 3. clusters --------------------------------------------------------------

# kind_config NAME: one control plane, then one worker per zone labelled with it.
kind_config() {
	local z zones=${ZONES[$1]} region=${REGIONS[$1]}
	printf '%s\n' "kind: Cluster" "apiVersion: kind.x-k8s.io/v1alpha4" "nodes:" "  - role: control-plane"
	for ((z = 0; z < zones; z++)); do
		printf '%s\n' "  - role: worker" "    labels:" "      topology.kubernetes.io/zone: $region-$(zone_letter "$z")"
	done
}

for c in "${CLUSTERS[@]}"; do
	step "creating kind cluster $(kind_name "$c") (${ZONES[$c]} zone(s) of region ${REGIONS[$c]})"
	kind_config "$c" | kind create cluster --name "$(kind_name "$c")" --config - --wait 120s >&2
	kubectl --context "$(context "$c")" wait --for=condition=Ready nodes --all --timeout="$ROLLOUT_TIMEOUT" >&2
	step "loading the images into $(kind_name "$c")"
	kind load docker-image --name "$(kind_name "$c")" "${IMAGES[@]}" >&2
done

# --- 4. trust -----------------------------------------------------------------

# The runner rotates CAs by writing new files at exactly these paths.
step "creating the root CA (trust domain $TRUST_DOMAIN) in $WORK/trust/root"
mkdir -p "$WORK/trust"
chmod 700 "$WORK/trust"
"$MESHCTL" trust init --trust-domain "$TRUST_DOMAIN" --out "$WORK/trust/root" --force >&2
for c in "${CLUSTERS[@]}"; do
	step "issuing cluster $c's intermediate CA in $WORK/trust/$c-ca"
	"$MESHCTL" trust issue-cluster --root "$WORK/trust/root" --cluster "$c" --out "$WORK/trust/$c-ca" --force >&2
done

# --- 5. Meshfed ---------------------------------------------------------------

# rollout_all CLUSTER NAMESPACE: waits for every Deployment of NAMESPACE.
rollout_all() {
	local ctx deployments d
	ctx=$(context "$1")
	deployments=$(kubectl --context "$ctx" -n "$2" get deployments -o name)
	for d in $deployments; do
		kubectl --context "$ctx" -n "$2" rollout status "$d" --timeout="$ROLLOUT_TIMEOUT" >&2
	done
}

for c in "${CLUSTERS[@]}"; do
	step "installing Meshfed in $(context "$c")"
	args=(install --cluster "$c" --ca "$WORK/trust/$c-ca" --region "${REGIONS[$c]}"
		--gateway-service-type NodePort --gateway-replicas 1
		--image-registry "$REGISTRY" --image-tag "$TAG"
		# kind has no Gateway API: the route steps need its HTTPRoute CRD.
		--gateway-api-crds)
	if [[ -n $LEAF_TTL ]]; then
		args+=(--leaf-ttl "${LEAF_TTL}s")
	fi
	# Rolled out below, every cluster at once.
	"$MESHCTL" "${args[@]}" --apply --wait 0s --context "$(context "$c")" >&2
done
for c in "${CLUSTERS[@]}"; do
	step "waiting for Meshfed to roll out in $(context "$c")"
	rollout_all "$c" "$MESHFED_NAMESPACE"
done

# --- 6. workloads -------------------------------------------------------------

# annotation KEY VALUE: one pod template annotation line.
annotation() { printf '        %s: "%s"\n' "$1" "$2"; }

service_account() {
	cat <<EOF
---
apiVersion: v1
kind: ServiceAccount
metadata:
  name: $1
  namespace: $SHOP
EOF
}

# service NAME PORT PORT-NAME: a Service of app NAME targeting the app's own
# port, as it would be without a mesh: the sidecar intercepts inbound.
service() {
	cat <<EOF
---
apiVersion: v1
kind: Service
metadata:
  name: $1
  namespace: $SHOP
spec:
  selector:
    app: $1
  ports:
    - name: $3
      port: $2
      targetPort: $3
EOF
}

# deployment NAME APP SERVICE-ACCOUNT ZONE PORT PORT-NAME ANNOTATIONS ARGS...:
# one replica of `meshctl ARGS` pinned to ZONE.
deployment() {
	local name=$1 app=$2 sa=$3 zone=$4 port=$5 port_name=$6 annotations=$7 args
	shift 7
	args=$(printf '"%s", ' "$@")
	cat <<EOF
---
apiVersion: apps/v1
kind: Deployment
metadata:
  name: $name
  namespace: $SHOP
  labels:
    app: $app
    meshfed.io/scenario-pod: $name
spec:
  replicas: 1
  selector:
    matchLabels:
      meshfed.io/scenario-pod: $name
  template:
    metadata:
      labels:
        app: $app
        meshfed.io/scenario-pod: $name
        # The sidecar takes its zone from this label; Kubernetes copies the
        # node's only from 1.33 on, the nodeSelector below makes it true.
        topology.kubernetes.io/zone: $zone
      annotations:
$annotations
    spec:
      serviceAccountName: $sa
      nodeSelector:
        topology.kubernetes.io/zone: $zone
      containers:
        - name: $app
          image: $APP_IMAGE
          imagePullPolicy: IfNotPresent
          args: [${args%, }]
          ports:
            - name: $port_name
              containerPort: $port
          readinessProbe:
            tcpSocket:
              port: $port
            periodSeconds: 1
          securityContext:
            allowPrivilegeEscalation: false
            readOnlyRootFilesystem: true
            runAsNonRoot: true
            capabilities:
              drop: [ALL]
          resources:
            requests:
              cpu: 10m
              memory: 16Mi
            limits:
              memory: 64Mi
EOF
}

# shop_yaml CLUSTER: every sample workload of the cluster, as a user writes
# it: no sidecar (the webhook adds it when the pods are created).
shop_yaml() {
	local c=$1 z letter zone caller upstreams
	local region=${REGIONS[$c]} first_zone
	first_zone=$region-a
	local client_id=spiffe://$TRUST_DOMAIN/ns/$SHOP/sa/client
	upstreams=$(annotation meshfed.io/upstreams "api.$SHOP:$API_PORT=$API_UPSTREAM echo.$SHOP:$ECHO_PORT=$ECHO_UPSTREAM")
	for caller in api echo client ${CALLERS[$c]:-}; do
		service_account "$caller"
	done
	service api "$API_PORT" http
	service echo "$ECHO_PORT" tcp
	for ((z = 0; z < ${ZONES[$c]}; z++)); do
		letter=$(zone_letter "$z")
		zone=$region-$letter
		deployment "api-$letter" api api "$zone" "$API_PORT" http \
			"$(annotation meshfed.io/allow "$API_PORT=$client_id")" \
			dev exec api --listen "0.0.0.0:$API_PORT" --cluster "$c" --zone "$zone" --pod "api-$letter"
	done
	# Other versions of api: a Service and a pod each, in the first zone.
	for v in ${VERSIONS[$c]:-}; do
		service "api-$v" "$API_PORT" http
		deployment "api-$v" "api-$v" api "$first_zone" "$API_PORT" http \
			"$(annotation meshfed.io/allow "$API_PORT=$client_id")" \
			dev exec api --listen "0.0.0.0:$API_PORT" --cluster "$c" --zone "$first_zone" \
			--pod "api-$v" --service "api-$v"
	done
	# echo and the clients live in the first zone, as with the local provider.
	deployment echo echo echo "$first_zone" "$ECHO_PORT" tcp \
		"$(annotation meshfed.io/allow "$ECHO_PORT=$client_id")" \
		dev exec echo --listen "0.0.0.0:$ECHO_PORT"
	for caller in client ${CALLERS[$c]:-}; do
		deployment "$caller" "$caller" "$caller" "$first_zone" "$STATS_PORT" stats "$upstreams" \
			dev exec client --target "127.0.0.1:$API_UPSTREAM" --listen "0.0.0.0:$STATS_PORT" --interval 1s
	done
}

for c in "${CLUSTERS[@]}"; do
	ctx=$(context "$c")
	step "deploying the sample workloads in $ctx (namespace $SHOP, labelled for injection)"
	printf '%s\n' "apiVersion: v1" "kind: Namespace" "metadata:" "  name: $SHOP" \
		"  labels:" "    meshfed.io/inject: enabled" |
		kubectl --context "$ctx" apply -f - >&2
	shop_yaml "$c" | kubectl --context "$ctx" apply -n "$SHOP" -f - >&2
done
for entry in "${EXPORTED[@]}"; do
	read -r c service <<<"$entry"
	step "exporting $SHOP/$service from $(context "$c")"
	"$MESHCTL" export "svc/$service" -n "$SHOP" --context "$(context "$c")" >&2
done
for c in "${CLUSTERS[@]}"; do
	policies=("$PLAN/policies/$c"/*)
	[[ -e ${policies[0]} ]] || continue
	ctx=$(context "$c")
	step "applying the FailoverPolicies of $ctx"
	kubectl --context "$ctx" wait --for=condition=Established crd/failoverpolicies.meshfed.io --timeout=60s >&2
	kubectl --context "$ctx" apply -n "$SHOP" -f "$PLAN/policies/$c" >&2
done
for c in "${CLUSTERS[@]}"; do
	step "waiting for the sample workloads to roll out in $(context "$c")"
	rollout_all "$c" "$SHOP"
done

# --- 7. links -----------------------------------------------------------------

# meshctl link reads the exporting gateway's NodePort Service itself: it
# dials every node's InternalIP (kind nodes have no ExternalIP) at the
# allocated NodePort, which is what the kind network routes between the
# clusters' node containers. --gateway-address would pair the addresses with
# the gateway's container port instead, so it is not given.
for entry in "${LINKS[@]}"; do
	read -r c peer <<<"$entry"
	step "linking: $c imports $peer's exports"
	args=(link --from-context "$(context "$peer")" --to-context "$(context "$c")")
	if [[ -n $LEASE_TTL ]]; then
		args+=(--lease-ttl "$LEASE_TTL")
	fi
	"$MESHCTL" "${args[@]}" >&2
done

# --- 8. check -----------------------------------------------------------------

contexts=()
for c in "${CLUSTERS[@]}"; do
	contexts+=(--context "$(context "$c")")
done
step "waiting for meshctl check to pass (at most ${CHECK_TIMEOUT_SECONDS}s)"
deadline=$((SECONDS + CHECK_TIMEOUT_SECONDS))
until report=$("$MESHCTL" check "${contexts[@]}" 2>&1); do
	if ((SECONDS >= deadline)); then
		printf '%s\n' "$report" >&2
		die "meshctl check still fails after ${CHECK_TIMEOUT_SECONDS}s (its last report is above)"
	fi
	sleep 5
done
STEP=
echo "federation ready"
