#!/usr/bin/env bash
# Start a one-node SLURM on this machine for the tests (root; Debian's slurm-wlm + munge). Idempotent.
#   bash scripts/slurm-up.sh      -> exit 0 once `sinfo` shows the node idle
set -euo pipefail
if ! command -v slurmctld >/dev/null || ! command -v munged >/dev/null; then
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q slurm-wlm munge >/dev/null
fi
HOST=$(hostname -s)
CPUS=$(nproc)
MEM=$(( $(awk '/MemTotal/ {print $2}' /proc/meminfo) / 1024 - 1024 ))
mkdir -p /etc/slurm /var/spool/slurmctld /var/spool/slurmd /var/log/slurm /run/munge /etc/munge
CONF_NEW=$(mktemp)
cat > "$CONF_NEW" <<CONF
ClusterName=nnunet-supervise-test
SlurmctldHost=${HOST}
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
JobRequeue=1
ReturnToService=2
StateSaveLocation=/var/spool/slurmctld
SlurmdSpoolDir=/var/spool/slurmd
SlurmctldLogFile=/var/log/slurm/slurmctld.log
SlurmdLogFile=/var/log/slurm/slurmd.log
SlurmctldPidFile=/run/slurmctld.pid
SlurmdPidFile=/run/slurmd.pid
MpiDefault=none
AuthInfo=cred_expire=10
KillWait=30
NodeName=${HOST} CPUs=${CPUS} RealMemory=${MEM} State=UNKNOWN
PartitionName=debug Nodes=${HOST} Default=YES MaxTime=INFINITE State=UP
CONF
# cred_expire=10: a requeued job waits for its credential to expire (BeginTime) before it runs again; SLURM's
# default 120 s would make the preemption test wait 2 minutes, and releasing the job earlier by hand races the
# revoked credential (slurmd refuses the launch and the job fails with exit 1).
chmod 644 "$CONF_NEW"  # mktemp makes it 0600; every SLURM client (sinfo, sbatch as any user) reads it
if ! cmp -s "$CONF_NEW" /etc/slurm/slurm.conf; then
  mv "$CONF_NEW" /etc/slurm/slurm.conf
  # a changed configuration reaches daemons that already run only by a restart
  pkill -x slurmctld 2>/dev/null || true
  pkill -x slurmd 2>/dev/null || true
  for _ in $(seq 1 30); do pgrep -x slurmctld >/dev/null || pgrep -x slurmd >/dev/null || break; sleep 1; done
else
  rm -f "$CONF_NEW"
fi
if [ ! -s /etc/munge/munge.key ]; then
  dd if=/dev/urandom bs=1 count=1024 of=/etc/munge/munge.key 2>/dev/null
fi
chown -R munge:munge /etc/munge /run/munge 2>/dev/null || true
chmod 400 /etc/munge/munge.key
pgrep -x munged >/dev/null || munged --force
pgrep -x slurmctld >/dev/null || slurmctld
pgrep -x slurmd >/dev/null || slurmd
for _ in $(seq 1 60); do
  if sinfo -h -o %T 2>/dev/null | grep -qx idle; then exit 0; fi
  scontrol update nodename="${HOST}" state=resume >/dev/null 2>&1 || true
  sleep 1
done
echo "slurm did not come up: $(sinfo 2>&1)" >&2
exit 1
