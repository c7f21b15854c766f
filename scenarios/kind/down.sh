#!/usr/bin/env bash
#
# down.sh WORK: deletes the kind cluster meshfed-NAME of every cluster
# WORK/plan/clusters names. Idempotent: a cluster already gone is skipped,
# and without a plan there is nothing to delete.
#
# WORK/trust/ (the root key among it) stays with WORK; remove WORK to drop it.

set -euo pipefail

# shellcheck source-path=SCRIPTDIR source=lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

readonly USAGE="usage: down.sh WORK"

[[ $# -eq 1 ]] || usage_error "down.sh takes exactly one argument" "$USAGE"
WORK=$1
if ! plan_load "$WORK"; then
	log "nothing to delete"
	exit 0
fi
if ((${#CLUSTERS[@]} == 0)); then
	log "$PLAN/clusters names no cluster: nothing to delete"
	exit 0
fi

need kind "$HOW_KIND" || exit 2
existing=$(kind get clusters 2>/dev/null) ||
	die "kind get clusters failed: is Docker running? (the clusters of $PLAN/clusters cannot be listed)"
for c in "${CLUSTERS[@]}"; do
	name=$(kind_name "$c")
	if ! grep -qx "$name" <<<"$existing"; then
		log "kind cluster $name is already gone"
		continue
	fi
	log "deleting kind cluster $name"
	kind delete cluster --name "$name" >&2
done
