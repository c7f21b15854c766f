# shellcheck shell=bash disable=SC2034
# (SC2034: the constants and maps below are used by the scripts that source this.)
#
# lib.sh: what up.sh, down.sh and fault.sh share: messages, tool checks, and
# the plan `meshctl scenario run --provider kind` writes into WORK/plan/
# (format in README.md).
#
# Everything up to the tool checks is bash builtins only (plus the `dirname`
# that sources this file), so a machine without Docker or kind gets the clear
# refusal, not a "command not found" from halfway through.

# The six images deploy/Dockerfile builds, by target name.
readonly MESHFED_IMAGES=(meshfed-identity meshfed-controller meshfed-gateway meshfed-injector meshfed-sidecar meshctl)
# The workload namespace the runner reads and port-forwards into.
readonly SHOP=shop
# Meshfed's own namespace (meshctl install).
readonly MESHFED_NAMESPACE=meshfed-system
# The comment that marks fault.sh's partition rules, so heal removes exactly those.
readonly PARTITION_MARK=meshfed-partition

log() { printf 'kind: %s\n' "$*" >&2; }

die() {
	log "error: $*"
	exit 1
}

# usage_error MESSAGE USAGE: misuse, exit 2.
usage_error() {
	log "error: $1"
	printf '%s\n' "$2" >&2
	exit 2
}

# need TOOL HOW-TO-GET-IT: says what is missing and how to get it, returns 1.
need() {
	if ! command -v "$1" >/dev/null 2>&1; then
		log "missing: $1 is not installed: $2"
		return 1
	fi
}

readonly HOW_DOCKER="install Docker Engine (https://docs.docker.com/engine/install/) and start it"
readonly HOW_KIND="install kind >= 0.23 (https://kind.sigs.k8s.io/docs/user/quick-start/#installation, or: go install sigs.k8s.io/kind@latest)"
readonly HOW_KUBECTL="install kubectl (https://kubernetes.io/docs/tasks/tools/)"

kind_name() { printf 'meshfed-%s' "$1"; }
context() { printf 'kind-meshfed-%s' "$1"; }

is_label() { [[ $1 =~ ^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$ ]]; }

# zone_letter I: the letter of zone I (0-based): a, b, c, d.
zone_letter() {
	local letters=abcd
	printf '%s' "${letters:$1:1}"
}

# --- the plan ---------------------------------------------------------------

PLAN=
CLUSTERS=()
declare -gA ZONES=() REGIONS=()

# plan_lines FILE: the file's non-blank lines (nothing when it is absent).
plan_lines() {
	local line
	[[ -f $1 ]] || return 0
	while IFS= read -r line || [[ -n $line ]]; do
		[[ -n ${line//[[:space:]]/} ]] && printf '%s\n' "$line"
	done <"$1"
}

# plan_load WORK: reads and checks WORK/plan/clusters into CLUSTERS, ZONES
# and REGIONS. Returns 1 (after saying so) when there is no plan at all.
plan_load() {
	PLAN=$1/plan
	if [[ ! -f $PLAN/clusters ]]; then
		log "no plan: $PLAN/clusters does not exist"
		return 1
	fi
	local name zones region extra
	while read -r name zones region extra; do
		[[ -z $extra ]] || die "$PLAN/clusters: '$name $zones $region $extra': expected NAME ZONES REGION"
		is_label "$name" || die "$PLAN/clusters: cluster name '$name' is not a DNS label"
		[[ $zones =~ ^[1-4]$ ]] || die "$PLAN/clusters: cluster $name: ZONES '$zones' is not 1 to 4"
		is_label "$region" || die "$PLAN/clusters: cluster $name: region '$region' is not a DNS label"
		[[ -z ${ZONES[$name]:-} ]] || die "$PLAN/clusters: cluster $name is named twice"
		CLUSTERS+=("$name")
		ZONES[$name]=$zones
		REGIONS[$name]=$region
	done < <(plan_lines "$PLAN/clusters")
}

in_plan() { [[ -n ${ZONES[$1]:-} ]]; }

# plan_cluster NAME: dies unless NAME is a cluster of the plan.
plan_cluster() {
	in_plan "$1" || die "cluster '$1' is not in the plan ($PLAN/clusters names: ${CLUSTERS[*]:-none})"
}

# setting KEY [DEFAULT]: KEY's value in WORK/plan/settings (KEY=VALUE lines,
# read, never sourced), or DEFAULT when absent or empty.
setting() {
	local line value=
	while IFS= read -r line; do
		if [[ $line == "$1="* ]]; then
			value=${line#*=}
		fi
	done < <(plan_lines "$PLAN/settings")
	printf '%s' "${value:-${2:-}}"
}

# --- nodes (need kind and docker) --------------------------------------------

# cluster_nodes NAME: the node containers of kind cluster meshfed-NAME.
cluster_nodes() {
	local nodes
	nodes=$(kind get nodes --name "$(kind_name "$1")" 2>/dev/null) ||
		die "kind get nodes --name $(kind_name "$1") failed: is Docker running?"
	[[ -n $nodes ]] || die "kind cluster $(kind_name "$1") has no nodes: is it up? (up.sh)"
	printf '%s\n' "$nodes"
}

# node_ips NODE: the node container's IPv4 addresses on its Docker networks.
node_ips() {
	docker inspect --format '{{range .NetworkSettings.Networks}}{{.IPAddress}} {{end}}' "$1" ||
		die "docker inspect $1 failed"
}

# other_ips NAME: the addresses of every node of every other plan cluster
# that is up, one a line.
other_ips() {
	local c node nodes ips ip
	for c in "${CLUSTERS[@]}"; do
		[[ $c != "$1" ]] || continue
		nodes=$(kind get nodes --name "$(kind_name "$c")" 2>/dev/null) || continue
		for node in $nodes; do
			ips=$(node_ips "$node")
			for ip in $ips; do
				printf '%s\n' "$ip"
			done
		done
	done
}
