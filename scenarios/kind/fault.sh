#!/usr/bin/env bash
#
# fault.sh WORK VERB ARGS...: node-level faults on the kind clusters of
# WORK/plan/, run inside the node containers with `docker exec`.
#
# Arguments and the cluster name are checked before Docker is touched.
# Exit status: 0 done; 1 failed; 2 misuse (a cluster not in the plan too) or
# docker, kind or kubectl missing; 3 degrade is not possible here (no tc or
# no netem: the runner skips the step).

set -euo pipefail

# shellcheck source-path=SCRIPTDIR source=lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

readonly USAGE="usage: fault.sh WORK VERB ARGS...
  partition CLUSTER                        drop all traffic between CLUSTER's nodes and the other clusters' nodes
  heal CLUSTER                             remove exactly those rules
  degrade CLUSTER LATENCY_MS LOSS_PERCENT  tc netem on CLUSTER's traffic to the other clusters' nodes
  undegrade CLUSTER                        remove it
  pause CLUSTER NAMESPACE SELECTOR         SIGSTOP every container of the pods matching SELECTOR
  resume CLUSTER NAMESPACE SELECTOR        SIGCONT them"
# Exit status with which degrade says netem is not available.
readonly NO_NETEM=3

(($# >= 2)) || usage_error "fault.sh needs WORK and a VERB" "$USAGE"
WORK=$1
VERB=$2
shift 2

# args N: the verb takes exactly N arguments.
args() { (($# - 1 == $1)) || usage_error "$VERB takes $1 argument(s), got $(($# - 1))" "$USAGE"; }

# percent TEXT: TEXT is a number from 0 to 100 (as the runner prints an f64).
percent() {
	[[ $1 =~ ^([0-9]{1,3})(\.[0-9]+)?$ ]] || return 1
	((10#${BASH_REMATCH[1]} < 100)) || [[ $1 =~ ^100(\.0+)?$ ]]
}

case $VERB in
partition | heal | undegrade)
	args 1 "$@"
	;;
degrade)
	args 3 "$@"
	[[ $2 =~ ^[0-9]{1,6}$ ]] || usage_error "degrade: LATENCY_MS '$2' is not a whole number of milliseconds" "$USAGE"
	percent "$3" || usage_error "degrade: LOSS_PERCENT '$3' is not a percentage from 0 to 100" "$USAGE"
	;;
pause | resume)
	args 3 "$@"
	is_label "$2" || usage_error "$VERB: NAMESPACE '$2' is not a namespace name" "$USAGE"
	[[ $3 =~ ^[^[:space:]]+$ ]] || usage_error "$VERB: SELECTOR '$3' is not a label selector" "$USAGE"
	;;
*)
	usage_error "unknown verb '$VERB'" "$USAGE"
	;;
esac
CLUSTER=$1

plan_load "$WORK" || usage_error "cluster '$CLUSTER' is not in the plan: there is no plan in $WORK" "$USAGE"
in_plan "$CLUSTER" ||
	usage_error "cluster '$CLUSTER' is not in the plan ($PLAN/clusters names: ${CLUSTERS[*]:-none})" "$USAGE"

missing=0
need docker "$HOW_DOCKER" || missing=1
need kind "$HOW_KIND" || missing=1
if [[ $VERB == pause || $VERB == resume ]]; then
	need kubectl "$HOW_KUBECTL" || missing=1
fi
((missing == 0)) || exit 2

nodes=$(cluster_nodes "$CLUSTER")
mapfile -t NODES <<<"$nodes"

# peer_ips: the other plan clusters' node addresses into IPS, or die.
peer_ips() {
	local ips
	ips=$(other_ips "$CLUSTER")
	[[ -n $ips ]] || die "no node of another plan cluster is up: there is nothing to $VERB $CLUSTER from"
	mapfile -t IPS <<<"$ips"
}

# --- partition / heal -----------------------------------------------------------

# In the raw table, before conntrack and NAT: PREROUTING sees what arrives
# from the peers (-s) and what this node's pods send them (-d), OUTPUT what
# the node itself sends. Each rule carries the mark so heal removes exactly
# these; -C first, so partitioning twice adds nothing.
partition() {
	local node
	peer_ips
	for node in "${NODES[@]}"; do
		log "partition: $node drops all traffic to and from ${IPS[*]}"
		docker exec -i "$node" sh -s -- "$PARTITION_MARK" "${IPS[@]}" <<'EOF'
set -eu
mark=$1
shift
add() { iptables -t raw -C "$@" 2>/dev/null || iptables -t raw -I "$@"; }
for ip in "$@"; do
	add PREROUTING -s "$ip" -m comment --comment "$mark" -j DROP
	add PREROUTING -d "$ip" -m comment --comment "$mark" -j DROP
	add OUTPUT -d "$ip" -m comment --comment "$mark" -j DROP
done
EOF
	done
}

# Every rule carrying the mark, whatever its address (a peer may be gone by
# now), deleted as iptables -S prints it.
heal() {
	local node
	for node in "${NODES[@]}"; do
		log "heal: removing the $PARTITION_MARK rules of $node"
		docker exec -i "$node" sh -s -- "$PARTITION_MARK" <<'EOF'
set -eu
mark=$1
for round in 1 2 3 4 5 6 7 8 9 10; do
	rules=$(iptables -t raw -S | grep -E -e "--comment \"?$mark\"? " || true)
	[ -n "$rules" ] || exit 0
	printf '%s\n' "$rules" | while IFS= read -r rule; do
		eval "iptables -t raw -D ${rule#-A }"
	done
done
echo "$mark rules still there after $round rounds" >&2
exit 1
EOF
	done
}

# --- degrade / undegrade --------------------------------------------------------

# A prio qdisc whose fourth band (never chosen by the priomap) holds netem,
# and u32 filters sending only traffic to the peers' nodes into it: the
# cluster's own traffic, its API server's included, is not slowed.
degrade() {
	local latency=$1 loss=$2 node rc out done_nodes=()
	peer_ips
	for node in "${NODES[@]}"; do
		rc=0
		out=$(docker exec -i "$node" sh -s -- "$latency" "$loss" "${IPS[@]}" 2>&1 <<'EOF'
set -eu
latency=$1
loss=$2
shift 2
if ! command -v tc >/dev/null 2>&1; then
	echo "tc is not installed in the kind node image"
	exit 3
fi
tc qdisc del dev eth0 root 2>/dev/null || true
if ! err=$(tc qdisc add dev eth0 root handle 1: prio bands 4 priomap 1 2 2 2 1 2 0 0 1 1 1 1 1 1 1 1 2>&1); then
	echo "the prio qdisc is not available: $err"
	exit 3
fi
if ! err=$(tc qdisc add dev eth0 parent 1:4 handle 40: netem delay "${latency}ms" loss "${loss}%" 2>&1); then
	tc qdisc del dev eth0 root 2>/dev/null || true
	echo "the kernel has no netem qdisc: $err"
	exit 3
fi
for ip in "$@"; do
	tc filter add dev eth0 parent 1: protocol ip prio 1 u32 match ip dst "$ip/32" flowid 1:4
done
EOF
		) || rc=$?
		if ((rc != 0)); then
			for done_node in "${done_nodes[@]}"; do
				undegrade_node "$done_node" || true
			done
			undegrade_node "$node" || true
			if ((rc == NO_NETEM)); then
				printf 'kind: degrade is not possible on %s: %s\n' "$node" "${out//$'\n'/; }" >&2
				exit "$NO_NETEM"
			fi
			die "degrade on $node failed (exit $rc): ${out//$'\n'/; }"
		fi
		done_nodes+=("$node")
	done
	# Only now: when netem is missing, the reason is the one line on stderr.
	log "degrade: ${NODES[*]} delay their traffic to ${IPS[*]} by ${latency}ms and lose $loss% of it"
}

undegrade_node() {
	docker exec -i "$1" sh -s <<'EOF'
command -v tc >/dev/null 2>&1 || exit 0
tc qdisc del dev eth0 root 2>/dev/null || true
EOF
}

undegrade() {
	local node
	for node in "${NODES[@]}"; do
		log "undegrade: $node"
		undegrade_node "$node"
	done
}

# --- pause / resume -------------------------------------------------------------

# pause_pods SIGNAL NAMESPACE SELECTOR: signals every container process of
# the matching pods (and their children) on the pods' nodes, found through
# the node's CRI.
pause_pods() {
	local signal=$1 namespace=$2 selector=$3 pods pod node rc out signalled=0
	pods=$(kubectl --context "$(context "$CLUSTER")" -n "$namespace" get pods -l "$selector" \
		-o jsonpath='{range .items[*]}{.metadata.name}{" "}{.spec.nodeName}{"\n"}{end}')
	[[ -n $pods ]] || die "no pod of namespace $namespace in cluster $CLUSTER matches $selector"
	while read -r pod node; do
		if [[ -z $node ]]; then
			log "$VERB: pod $namespace/$pod is on no node yet: skipped"
			continue
		fi
		rc=0
		out=$(docker exec -i "$node" sh -s -- "$signal" "$namespace" "$pod" <<'EOF'
set -eu
signal=$1
namespace=$2
pod=$3
pids=
for sandbox in $(crictl pods --namespace "$namespace" --name "^$pod\$" -q); do
	for container in $(crictl ps --pod "$sandbox" -q); do
		pids="$pids $(crictl inspect --output go-template --template '{{.info.pid}}' "$container")"
	done
done
if [ -z "$pids" ]; then
	echo "no running container" >&2
	exit 4
fi
for pid in $pids; do
	kill -s "$signal" "$pid"
	if command -v pkill >/dev/null 2>&1; then
		pkill --signal "$signal" -P "$pid" || true
	fi
done
echo $pids
EOF
		) || rc=$?
		case $rc in
		0)
			log "$VERB: $namespace/$pod on $node (pids $out)"
			signalled=$((signalled + 1))
			;;
		4) log "$VERB: $namespace/$pod on $node has no running container: skipped" ;;
		*) die "$VERB: signalling $namespace/$pod on $node failed (exit $rc)" ;;
		esac
	done <<<"$pods"
	((signalled > 0)) || die "no running container in the pods of namespace $namespace in cluster $CLUSTER matching $selector"
}

case $VERB in
partition) partition ;;
heal) heal ;;
degrade) degrade "$2" "$3" ;;
undegrade) undegrade ;;
pause) pause_pods STOP "$2" "$3" ;;
resume) pause_pods CONT "$2" "$3" ;;
esac
