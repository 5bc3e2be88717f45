#!/usr/bin/env bash
# Start a PRIVATE one-node SLURM for the tests (root; Debian's slurm-wlm + munge, see scripts/system-deps.sh).
#   eval "$(bash scripts/slurm-up.sh)"     -> exit 0 once `sinfo` shows the node idle; last line of output:
#   export SLURM_CONF=<its slurm.conf>        (sbatch, squeue, scontrol and our own `scontrol requeue` need it)
# Everything it writes (configuration, state, spool, logs, pid files, munge socket, key and seed) lives under
# $NNUNET_SUPERVISE_SLURM_DIR (default /tmp/nnunet-supervise-slurm). It has its own ClusterName, its own free ports
# (never 6817/6818), its own munged; it never writes /etc/slurm or /etc/munge, and it signals only the processes
# whose pids are in its own pid files (a SLURM already running on this machine is left alone). Idempotent: with it
# running, a second call only prints the export line; a changed configuration restarts its own daemons.
# scripts/slurm-down.sh stops it.
set -euo pipefail
DIR=${NNUNET_SUPERVISE_SLURM_DIR:-/tmp/nnunet-supervise-slurm}
say() { echo "slurm-up: $*" >&2; }
die() { say "$*"; exit 1; }
[ "$(id -u)" = 0 ] || die "needs root (SlurmUser=root, slurmd as root)"
for tool in slurmctld slurmd munged sinfo scontrol; do
  command -v "$tool" >/dev/null || die "$tool is not installed (bash scripts/system-deps.sh installs slurm-wlm and munge)"
done
plain() {  # its paths go into slurm.conf's AuthInfo=socket=...,cred_expire=10 and into a unix socket's name
  case $1 in *[,=\ ]*) die "NNUNET_SUPERVISE_SLURM_DIR must not contain ',', '=' or spaces (slurm.conf's AuthInfo): $1";; esac
  [ ${#1} -lt 80 ] || die "NNUNET_SUPERVISE_SLURM_DIR is too long for its munge socket's path (under 80 characters): $1"
}
plain "$DIR"
mkdir -p "$DIR"
DIR=$(cd "$DIR" && pwd -P)
plain "$DIR"
CONF=$DIR/etc/slurm.conf
SOCKET=$DIR/munge/munge.socket
mkdir -p "$DIR"/{etc,state,spool,log,run,munge}
chmod 711 "$DIR/munge"  # munged: not writable by others (the key stays 0400); x for all: any user reaches the socket
# every SLURM command of this script talks to the private cluster only
export SLURM_CONF=$CONF
unset SLURM_CLUSTERS

# --- pid files: the only processes this script (and slurm-down.sh) ever signals ---
# shellcheck source=scripts/slurm-lib.sh
source "$(dirname "$0")/slurm-lib.sh"  # ours, stop
MUNGE_PID=$DIR/run/munged.pid
CTLD_PID=$DIR/run/slurmctld.pid
SLURMD_PID=$DIR/run/slurmd.pid

# --- ports: free ones of its own, kept while its daemons run ---
port_in_use() {  # any socket on this port, listening or not (TIME_WAIT too), IPv4 or IPv6
  local hex
  hex=$(printf ':%04X ' "$1")
  grep -qF -- "$hex" /proc/net/tcp /proc/net/tcp6 2>/dev/null
}
free_pair() {  # two consecutive free ports, away from SLURM's defaults (6817-6819)
  local p
  for _ in $(seq 1 200); do
    p=$(( 20000 + (RANDOM * 32768 + RANDOM) % 40000 ))
    if ! port_in_use "$p" && ! port_in_use $((p + 1)); then echo "$p"; return 0; fi
  done
  return 1
}
running=
if ours munged "$MUNGE_PID" >/dev/null && ours slurmctld "$CTLD_PID" >/dev/null && ours slurmd "$SLURMD_PID" >/dev/null
then running=1; fi
CTLD_PORT=$(sed -n 's/^SlurmctldPort=//p' "$CONF" 2>/dev/null || true)
if [ -z "$running" ] || ! [[ $CTLD_PORT =~ ^[0-9]+$ ]]; then
  # not all of it runs: whatever of its own SLURM is left (a daemon that died, a half-finished start) starts again,
  # on ports free now
  stop slurmd "$SLURMD_PID"
  stop slurmctld "$CTLD_PID"
  running=
  CTLD_PORT=$(free_pair) || die "found no two free ports"
fi
SLURMD_PORT=$((CTLD_PORT + 1))

HOST=$(hostname -s)
CPUS=$(nproc)
MEM=$(( $(awk '/MemTotal/ {print $2}' /proc/meminfo) / 1024 - 1024 ))
CONF_NEW=$(mktemp "$DIR/etc/slurm.conf.XXXXXX")
cat > "$CONF_NEW" <<CONF
# written by nnunet-supervise's scripts/slurm-up.sh: a private test cluster, everything under $DIR
ClusterName=nnunet-supervise-private
SlurmctldHost=${HOST}(127.0.0.1)
SlurmctldPort=${CTLD_PORT}
SlurmdPort=${SLURMD_PORT}
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket=${SOCKET},cred_expire=10
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
JobRequeue=1
ReturnToService=2
StateSaveLocation=$DIR/state
SlurmdSpoolDir=$DIR/spool
SlurmctldLogFile=$DIR/log/slurmctld.log
SlurmdLogFile=$DIR/log/slurmd.log
SlurmctldPidFile=$CTLD_PID
SlurmdPidFile=$SLURMD_PID
PlugStackConfig=$DIR/etc/plugstack.conf
MpiDefault=none
MailProg=/bin/true
KillWait=30
NodeName=${HOST} NodeAddr=127.0.0.1 CPUs=${CPUS} RealMemory=${MEM} State=UNKNOWN
PartitionName=debug Nodes=${HOST} Default=YES MaxTime=INFINITE State=UP
CONF
# cred_expire=10 (in AuthInfo): a requeued job waits for its credential to expire (BeginTime) before it runs again;
# SLURM's default 120 s would make the preemption test wait 2 minutes, and releasing the job earlier by hand races
# the revoked credential (slurmd refuses the launch and the job fails with exit 1).
# socket=: SLURM (daemons and clients alike) talks to the private munged, never to a system one.
# PlugStackConfig: an empty one of its own, not /etc/slurm/plugstack.conf.
chmod 644 "$CONF_NEW"  # mktemp makes it 0600; every SLURM client (sinfo, sbatch as any user) reads it
: > "$DIR/etc/plugstack.conf"
if ! cmp -s "$CONF_NEW" "$CONF"; then
  mv "$CONF_NEW" "$CONF"
  if [ -n "$running" ]; then
    say "its configuration changed: restarting its own slurmctld and slurmd"
    stop slurmd "$SLURMD_PID"
    stop slurmctld "$CTLD_PID"
  fi
else
  rm -f "$CONF_NEW"
fi

fail() {
  say "$*"
  for f in "$DIR"/log/slurmctld.log "$DIR"/log/slurmd.log "$DIR"/munge/munged.log; do
    [ -s "$f" ] && { echo "--- tail of $f" >&2; tail -n 15 "$f" >&2; }
  done
  exit 1
}

# --- munged of its own: its key, socket, pid, log and seed under $DIR/munge ---
if [ ! -s "$DIR/munge/munge.key" ]; then
  (umask 077; dd if=/dev/urandom bs=1 count=1024 of="$DIR/munge/munge.key" 2>/dev/null)
fi
chmod 400 "$DIR/munge/munge.key"
if ! ours munged "$MUNGE_PID" >/dev/null; then
  rm -f "$MUNGE_PID"
  # --force: the socket's folder lies under /tmp (world-writable, sticky), which munged otherwise refuses
  munged --force --socket="$SOCKET" --key-file="$DIR/munge/munge.key" --pid-file="$MUNGE_PID" \
    --log-file="$DIR/munge/munged.log" --seed-file="$DIR/munge/munged.seed" \
    || fail "its munged did not start"
  for _ in $(seq 1 20); do [ -S "$SOCKET" ] && ours munged "$MUNGE_PID" >/dev/null && break; sleep 0.5; done
  ours munged "$MUNGE_PID" >/dev/null || fail "its munged did not stay up"
fi

# --- slurmctld and slurmd, started with -f on its own configuration (pid files: SlurmctldPidFile, SlurmdPidFile) ---
if ! ours slurmctld "$CTLD_PID" >/dev/null; then
  rm -f "$CTLD_PID"
  slurmctld -f "$CONF" || fail "its slurmctld did not start"
fi
if ! ours slurmd "$SLURMD_PID" >/dev/null; then
  rm -f "$SLURMD_PID"
  slurmd -f "$CONF" || fail "its slurmd did not start"
fi
up=
for _ in $(seq 1 60); do
  if sinfo -h -o %T 2>/dev/null | grep -qx idle; then up=1; break; fi
  scontrol update nodename="${HOST}" state=resume >/dev/null 2>&1 || true
  sleep 1
done
[ -n "$up" ] || fail "its slurm did not come up: $(sinfo 2>&1 || true)"
for name in munged slurmctld slurmd; do
  pidfile=$DIR/run/$name.pid
  ours "$name" "$pidfile" >/dev/null || fail "its $name is not running (pid file $pidfile)"
done
say "a private one-node SLURM runs (cluster nnunet-supervise-private, ports ${CTLD_PORT}/${SLURMD_PORT}, $DIR)"
echo "export SLURM_CONF=$CONF"
