#!/usr/bin/env bash
# Stop the private one-node SLURM that scripts/slurm-up.sh started, and nothing else: its jobs (scancel on its own
# cluster), then its slurmd, slurmctld and munged, each by the pid in its pid file under
# $NNUNET_SUPERVISE_SLURM_DIR (default /tmp/nnunet-supervise-slurm) and only if that pid is still the daemon it started
# on that folder. The folder (configuration, state, logs, key) is left as it is, for reading and for the next start.
set -euo pipefail
DIR=${NNUNET_SUPERVISE_SLURM_DIR:-/tmp/nnunet-supervise-slurm}
say() { echo "slurm-down: $*" >&2; }
[ -d "$DIR" ] || { say "nothing to stop: no $DIR"; exit 0; }
DIR=$(cd "$DIR" && pwd -P)
CONF=$DIR/etc/slurm.conf
# shellcheck source=scripts/slurm-lib.sh
source "$(dirname "$0")/slurm-lib.sh"  # ours, stop
# its jobs first, while its slurmctld and slurmd can still end them (a batch job's slurmstepd outlives slurmd)
if [ -f "$CONF" ] && ours slurmctld "$DIR/run/slurmctld.pid" >/dev/null; then
  export SLURM_CONF=$CONF
  unset SLURM_CLUSTERS
  jobs=$(squeue -h -o %i 2>/dev/null || true)
  if [ -n "$jobs" ]; then
    say "cancelling the jobs of its cluster: $(echo "$jobs" | tr '\n' ' ')"
    # shellcheck disable=SC2086  # one id per word
    scancel $jobs 2>/dev/null || true
    for _ in $(seq 1 45); do [ -z "$(squeue -h -t running,completing -o %i 2>/dev/null)" ] && break; sleep 1; done
  fi
fi
stop slurmd "$DIR/run/slurmd.pid"
stop slurmctld "$DIR/run/slurmctld.pid"
stop munged "$DIR/run/munged.pid"
say "stopped; $DIR is left as it is"
