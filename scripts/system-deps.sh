#!/usr/bin/env bash
# System tools the tests use, installed when missing (root + apt only; elsewhere those tests skip):
# systemd-analyze (unit verification), slurm-wlm + munge (the programs for a private one-node SLURM, which
# scripts/slurm-up.sh starts under its own folder). Installing only puts the programs there: their system services
# are not started (Debian's policy-rc.d answers 101 while apt runs), and /etc/slurm is not configured.
set -euo pipefail
missing=()
command -v systemd-analyze >/dev/null || missing+=(systemd)
command -v slurmctld >/dev/null || missing+=(slurm-wlm)
command -v munged >/dev/null || missing+=(munge)
[ ${#missing[@]} -gt 0 ] || exit 0
if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null; then
  echo "system-deps: not installing ${missing[*]} (needs root and apt-get); the tests that use them skip" >&2
  exit 0
fi
echo "system-deps: installing with apt-get: ${missing[*]} (services not started)"
# a package's postinst starts its service through invoke-rc.d unless policy-rc.d says no; a system munged or
# slurmd started behind our back is exactly what the test cluster must not touch, so none is started
made_policy=
if [ ! -e /usr/sbin/policy-rc.d ]; then
  printf '#!/bin/sh\n# nnunet-supervise system-deps.sh: no service starts while it installs\nexit 101\n' \
    > /usr/sbin/policy-rc.d
  chmod 755 /usr/sbin/policy-rc.d
  made_policy=1
  trap 'rm -f /usr/sbin/policy-rc.d' EXIT
fi
DEBIAN_FRONTEND=noninteractive apt-get install -y -q "${missing[@]}" >/dev/null \
  || { apt-get update -q >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -q "${missing[@]}" >/dev/null; }
[ -z "$made_policy" ] || rm -f /usr/sbin/policy-rc.d
