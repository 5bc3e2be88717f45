# Sourced by scripts/slurm-up.sh and scripts/slurm-down.sh (not run on its own): the only way either signals a
# process. Both need DIR (the private cluster's folder, resolved) and say() set before sourcing it.

# ours NAME PIDFILE: the pid in PIDFILE is alive, is NAME, and was started on this folder (its command line names
# it), so a pid reused by some other process after ours died is never taken for ours
ours() {
  local pid
  pid=$(cat "$2" 2>/dev/null) || return 1
  [[ $pid =~ ^[0-9]+$ ]] || return 1
  [ "$(cat "/proc/$pid/comm" 2>/dev/null)" = "$1" ] || return 1
  tr '\0' ' ' < "/proc/$pid/cmdline" 2>/dev/null | grep -qF -- "$DIR/" || return 1
  echo "$pid"
}

# stop NAME PIDFILE: TERM, then KILL after 30 s, only the pid in PIDFILE and only while it is still ours
stop() {
  local pid
  pid=$(ours "$1" "$2") || { rm -f "$2"; return 0; }
  say "stopping its $1 (pid $pid)"
  kill -TERM "$pid" 2>/dev/null || true
  for _ in $(seq 1 30); do kill -0 "$pid" 2>/dev/null || break; sleep 1; done
  if kill -0 "$pid" 2>/dev/null && ours "$1" "$2" >/dev/null; then kill -KILL "$pid" 2>/dev/null || true; sleep 1; fi
  rm -f "$2"
}
