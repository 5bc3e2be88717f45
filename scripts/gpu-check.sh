#!/usr/bin/env bash
# The GPU check, in one call on a GPU machine (which has torch but not nnU-Net), from the repository root:
#   bash scripts/gpu-check.sh        needs .gpu-carry/ (made here by scripts/gpu-wheels.sh) carried along
# Parts, each with its own time limit, each run whatever the one before did:
#   0 setup    install the carried wheels (pip --no-index --no-deps --target), check their requirements, versions
#   1 probe    bench/gpu_probe.py: NVML info, health fields, Xid/ECC event registration
#   2 kill     bench/gpu/kill_resume.py: supervised cooperative training, SIGKILL inside an epoch after a snapshot,
#              SIGTERM for a step-level save (exit 75), resume to the end; relaunch delay, GPU memory freed
#   3 pack     bench/gpu/pack.py: an experiment of two folds on GPU 0 (per_gpu: 2) to the end; memory peaks
# Everything goes to $OUT (else ./gpu-check-out): summary.txt, log.txt, probe.txt, part2.json, part3.json,
# details.tar.gz (the runs' logs, configs, events, state). The whole run keeps within GPU_CHECK_BUDGET_S (420 s; the device call is given 480).
# CPU dry run of the logic (here, with .venv): GPU_CHECK_DEVICE=cpu bash scripts/gpu-check.sh
set -uo pipefail
cd "$(dirname "$0")/.." || exit 1
REPO=$PWD
DEVICE=${GPU_CHECK_DEVICE:-cuda}
OUTDIR=${OUT:-$REPO/gpu-check-out}
CARRY=${GPU_CARRY:-$REPO/.gpu-carry}
BUDGET=${GPU_CHECK_BUDGET_S:-420}
T0=$(date +%s)
mkdir -p "$OUTDIR"
WORK=$(mktemp -d /tmp/gpu-check.XXXXXX)
exec > >(tee -a "$OUTDIR/log.txt") 2>&1
declare -A VERDICT

left() { echo $((BUDGET - ($(date +%s) - T0))); }
# limit NOMINAL RESERVE: a part's time, at most what is left after RESERVE seconds kept for the parts after it
limit() { local l; l=$(($(left) - $2)); [ "$l" -gt "$1" ] && l=$1; [ "$l" -lt 10 ] && l=10; echo "$l"; }
section() { echo; echo "=== $1 ($(( $(date +%s) - T0 )) s in, $(left) s left)"; }
verdict_of() {  # PART RC JSON: PASS/FAIL from the part's JSON, TIMEOUT from timeout(1)'s 124/137
  local v
  v=$(grep -h "^VERDICT $1 " "$OUTDIR/log.txt" | tail -n1 | sed "s/^VERDICT $1 //")
  if [ "$2" = 124 ] || [ "$2" = 137 ]; then v="TIMEOUT (exit $2) ${v}"; fi
  [ -n "$v" ] || v="FAIL: exit $2, no verdict line (see log.txt)"
  echo "$v"
}

pack_up() {
  # the runs' small files (no checkpoints, no data) in one archive: the device call brings back 8 files at most
  (cd "$WORK" && find . -type f \( -name '*.log' -o -name '*.json' -o -name '*.jsonl' -o -name '*.yaml' \
     -o -name '*.txt' \) -size -4M -print0 | tar czf "$OUTDIR/details.tar.gz" --null -T - 2>/dev/null)
  {
    echo "gpu-check on $(hostname) $(date -u +%FT%TZ), device $DEVICE, $(( $(date +%s) - T0 )) s"
    cat "$WORK/versions.txt" 2>/dev/null
    for p in setup probe part2_kill_resume part3_pack_two_folds; do
      printf '%-22s %s\n' "$p" "${VERDICT[$p]:-NOT RUN}"
    done
  } > "$OUTDIR/summary.txt"
  echo; echo "=== summary"; cat "$OUTDIR/summary.txt"
}
trap 'pack_up; rm -rf "$WORK"' EXIT
trap 'echo "gpu-check: interrupted"; exit 130' INT TERM

# ---- 0: setup ------------------------------------------------------------------------------------------------------
section "setup"
if [ "$DEVICE" = cuda ] || [ "${GPU_CHECK_INSTALL:-0}" = 1 ]; then
  PY=${GPU_CHECK_PYTHON:-python3}
  SITE=$WORK/site
  if ls "$CARRY"/wheels/*.whl >/dev/null 2>&1; then
    if timeout -k 5 "$(limit 90 300)" "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir \
        --disable-pip-version-check --target "$SITE" "$CARRY"/wheels/*.whl; then
      echo "installed $(ls "$CARRY"/wheels/*.whl | wc -l) carried wheels into $SITE"
    else
      echo "pip install of the carried wheels failed"
    fi
  else
    echo "no wheels in $CARRY/wheels: run scripts/gpu-wheels.sh here and name .gpu-carry in carry"
  fi
  export PATH="$SITE/bin:$PATH"
else
  PY=${GPU_CHECK_PYTHON:-$REPO/.venv/bin/python}
  [ -x "$PY" ] || PY=python3
  SITE=$WORK/no-site  # the dry run uses .venv's packages; the carried wheels are for CPython 3.12
fi
# the stub first: nothing the check runs may call SimpleITK (also where a real one is installed, as in .venv)
export PYTHONPATH="$REPO/bench/gpu/stub:$SITE:$REPO${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONUNBUFFERED=1 PYTHONDONTWRITEBYTECODE=1
timeout -k 5 "$(limit 60 300)" "$PY" bench/gpu/deps_check.py "$SITE"; rc=$?
VERDICT[setup]=$([ $rc = 0 ] && echo "PASS: $(tail -n1 "$OUTDIR/log.txt")" || echo "FAIL (exit $rc): see log.txt")
{
  "$PY" - <<'EOF' 2>&1
import platform, sys
print(f"python {platform.python_version()} ({sys.executable})")
try:
    import torch
    cuda = torch.cuda.is_available()
    print(f"torch {torch.__version__}, built for CUDA {torch.version.cuda}, cuDNN {torch.backends.cudnn.version()}, "
          f"cuda available {cuda}" + (f", {torch.cuda.get_device_name(0)}" if cuda else ""))
except Exception as exc:
    print(f"torch: {type(exc).__name__}: {exc}")
from importlib import metadata
def version(d):
    try:
        return f"{d} {metadata.version(d)}"
    except metadata.PackageNotFoundError:
        return f"{d} missing"
print(", ".join(version(d) for d in ("nnunetv2", "blosc2", "numpy", "nvidia-ml-py", "psutil", "pydantic")))
EOF
  if command -v nvidia-smi >/dev/null; then
    echo "nvidia-smi: $(timeout 20 nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>&1)"
    echo "nvidia-smi: $(timeout 20 nvidia-smi 2>&1 | grep -o 'CUDA Version: [0-9.]*')"
  else
    echo "nvidia-smi: not on PATH"
  fi
} > "$WORK/versions.txt" 2>&1
cat "$WORK/versions.txt"

# ---- 1: probe ------------------------------------------------------------------------------------------------------
section "part 1: bench/gpu_probe.py"
timeout -k 5 "$(limit 45 280)" "$PY" bench/gpu_probe.py > "$OUTDIR/probe.txt" 2>&1; rc=$?
cat "$OUTDIR/probe.txt"
if [ $rc = 0 ]; then
  if grep -q "nothing to probe" "$OUTDIR/probe.txt"; then VERDICT[probe]="PASS (no GPU seen: nothing probed)"
  else VERDICT[probe]="PASS: $(grep -c '^GPU ' "$OUTDIR/probe.txt") GPU line(s); $(grep -m1 '^event wait returned' "$OUTDIR/probe.txt")"; fi
else
  VERDICT[probe]="$([ $rc = 124 ] && echo TIMEOUT || echo FAIL) (exit $rc): see probe.txt"
fi

# ---- 2: kill and resume --------------------------------------------------------------------------------------------
section "part 2: SIGKILL inside an epoch, SIGTERM for a step-level save, resume to the end"
timeout -k 30 "$(limit "${GPU_CHECK_PART2_S:-220}" 140)" "$PY" bench/gpu/kill_resume.py --data "$CARRY/data" \
  --work "$WORK/part2" --device "$DEVICE" --json "$OUTDIR/part2.json"; rc=$?
VERDICT[part2_kill_resume]=$(verdict_of part2_kill_resume $rc)

# ---- 3: two folds on one GPU ---------------------------------------------------------------------------------------
section "part 3: an experiment of two folds packed on GPU 0"
t3=$(limit "${GPU_CHECK_PART3_S:-200}" 35)
timeout -k 30 "$t3" "$PY" bench/gpu/pack.py --data "$CARRY/data" --work "$WORK/part3" --device "$DEVICE" \
  --json "$OUTDIR/part3.json" --timeout $((t3 - 40)) --epochs "${GPU_CHECK_PACK_EPOCHS:-3}" \
  --steps "${GPU_CHECK_PACK_STEPS:-10}"; rc=$?
VERDICT[part3_pack_two_folds]=$(verdict_of part3_pack_two_folds $rc)
fail=0
for p in setup probe part2_kill_resume part3_pack_two_folds; do
  case "${VERDICT[$p]:-}" in PASS*) ;; *) fail=1 ;; esac
done
exit $fail
