"""What one interruption costs in cooperative mode, for three ways of saving, side by side in one run.

    .venv/bin/python bench/preempt.py [--quick] [--keep] [--work DIR]

The interruption is a platform's: a stop notice (SIGTERM to the supervisor, which asks the cooperative trainer to
save and exit 75), then, N seconds later, SIGKILL of everything left (the supervisor's process group and the
trainer's tree), as a spot VM is reclaimed (GCE gives 30 s of notice, the tightest clouds a few); or a hard kill
with no notice at all. Then `python -m supervisor run run.yaml` again, to the end. The ways of saving:

- epoch:    cooperative: {enabled: true, save_on_stop: epoch}    (the stop saves at the epoch end)
- step:     cooperative: {enabled: true}                         (save_on_stop: step, the default)
- snapshot: cooperative: {enabled: true, snapshot_every_s: 2}    (a step-boundary snapshot every 2 s)

The trainer is tests/trainers/nnUNetTrainer_SlowSteps.py set to 2 epochs of 12 steps of 0.8 s sleep plus the tiny
network's compute (one thread), so an epoch is longer than a 6 s notice and what is left of it after the
interruption, 4 steps into epoch 1 (the last), shorter than a 30 s one. Each step appends its epoch and time.time()
to a steps file: steps redone = steps run in all minus the 2 x 12 an uninterrupted run needs; seconds lost = steps
redone x the mean step time of the uninterrupted run.

Then the snapshot overhead: two uninterrupted runs, snapshot_every_s 1 and none, their steps timed from the steps
file (intervals between consecutive steps of one epoch and process), and the ratio; and what one snapshot's copy
would be for a real 3d_fullres network (built from nnU-Net's default architecture at 6 stages, parameters counted,
its weights and a same-size SGD momentum copied as the shim copies them, timed on this CPU).

--quick: epoch and step at 6 s only, the snapshot's hard kill, and the overhead runs (8 nnU-Net starts instead of
14). --keep: leave the work folder. --work DIR: where (default /tmp/nnunet-supervise-bench-preempt); the tiny
dataset comes from $NNUNET_SUPERVISE_TEST_CACHE when set, else is made under DIR.
"""

from __future__ import annotations

import argparse
import io
import itertools
import json
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil

from supervisor.context import RunContext
from supervisor.daemon.process import marked_processes
from supervisor.demo.dataset import make_dataset
from supervisor.demo.runyaml import QUIET_ENV, write_demo_config
from supervisor.rundir.eventlog import read_events
from supervisor.trainer.protocol import MARKER_VAR, STEP_KEY

TRAINER = "nnUNetTrainer_SlowSteps"
TRAINERS = Path(__file__).resolve().parents[1] / "tests" / "trainers"
EPOCHS, STEPS, STEP_S = 2, 12, 0.8
# the trainer's shape (see its docstring): epochs longer than a 6 s notice, the rest of one after 4 steps shorter
# than a 30 s one; one torch thread
SHAPE = {"SLOW_STEPS_EPOCHS": str(EPOCHS), "SLOW_STEPS_PER_EPOCH": str(STEPS), "SLOW_STEPS_S": str(STEP_S),
         "SLOW_STEPS_THREADS": "1"}
NEEDED = EPOCHS * STEPS
AT_EPOCH, AFTER_STEPS = 1, 4  # the interruption comes after this many completed steps of this epoch
SNAPSHOT_S = 2.0
WAYS: dict[str, dict[str, Any]] = {
    "epoch": {"enabled": True, "save_on_stop": "epoch"},
    "step": {"enabled": True},
    "snapshot": {"enabled": True, "snapshot_every_s": SNAPSHOT_S},
}
NOTABLE = re.compile(r"warn|error|traceback|refus|quarantin|orphan|damaged|stale|leftover|corrupt|gave up|give up",
                     re.I)


@dataclass
class Outcome:
    name: str
    notice: float | None  # None: a hard kill, no notice
    stop: str = ""  # what the notice led to
    stop_s: float | None = None  # notice to the supervisor's own exit (None: the kill came first)
    trainer_exit: str = "-"
    record: str = "-"  # checkpoint_latest.pth after the stop
    saved_at: float | None = None  # its mtime minus the notice's (or the hard kill's) wall time
    restart_rc: int | None = None
    restart_s: float = 0.0
    resumed: list[str] = field(default_factory=list)
    steps: int = 0
    notable: list[str] = field(default_factory=list)


def steps_of(path: Path) -> list[tuple[int, float, int]]:
    if not path.exists():
        return []
    out = []
    for line in path.read_text().splitlines():
        parts = line.split()
        if len(parts) == 3:
            out.append((int(parts[0]), float(parts[1]), int(parts[2])))
    return out


def intervals(steps: list[tuple[int, float, int]]) -> list[float]:
    """Seconds between consecutive steps of one epoch in one process (epoch ends and restarts left out)."""
    return [b[1] - a[1] for a, b in itertools.pairwise(steps) if a[0] == b[0] and a[2] == b[2]]


def configure(root: Path, raw: Path, pre: Path, name: str, coop: dict[str, Any]) -> tuple[Path, RunContext, Path]:
    results = root / f"results_{name}"
    shutil.rmtree(results, ignore_errors=True)
    steps = root / f"{name}.steps"
    steps.unlink(missing_ok=True)
    config = write_demo_config(root / f"{name}.yaml", raw, pre, results,
                               nnunet={"trainer": TRAINER, "trainer_paths": [str(TRAINERS)],
                                       "env": {**QUIET_ENV, **SHAPE, "STEPS_FILE": str(steps)}},
                               restart={"backoff_initial_s": 1, "backoff_max_s": 1}, cooperative=coop)
    return config, RunContext.load(config), steps


def supervise(config: Path, log: Path) -> subprocess.Popen[bytes]:
    """The supervisor in a process group of its own, as a service manager starts it."""
    out = open(log, "ab")
    try:
        return subprocess.Popen([sys.executable, "-m", "supervisor", "run", str(config)], stdout=out,
                                stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True)
    finally:
        out.close()


def wait_until(cond: Any, timeout: float, what: str, interval: float = 0.05) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise RuntimeError(f"timed out waiting for {what}")
        time.sleep(interval)


def trainer_tree(ctx: RunContext, sup: psutil.Process) -> tuple[int, str, list[psutil.Process]]:
    """The trainer's pid (heartbeat.json), its run marker and every process of its tree and the supervisor's."""
    pid = int(json.loads(ctx.layout.heartbeat_file.read_text())["pid"])
    trainer = psutil.Process(pid)
    marker = trainer.environ().get(MARKER_VAR, "")
    procs = {p.pid: p for p in [sup, *sup.children(recursive=True), trainer, *trainer.children(recursive=True)]}
    return pid, marker, list(procs.values())


def kill_everything(sup: subprocess.Popen[bytes], marker: str, procs: list[psutil.Process]) -> list[int]:
    """SIGKILL the supervisor's group, the trainer's group and every process seen or marked: what was alive."""
    alive = [p for p in procs if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]
    groups = set()
    for p in alive:
        try:
            groups.add(os.getpgid(p.pid))
        except OSError:
            pass
    for g in groups | {sup.pid}:
        try:
            os.killpg(g, signal.SIGKILL)
        except OSError:
            pass
    left = alive + (marked_processes(marker) if marker else [])
    for p in left:
        try:
            p.kill()
        except psutil.Error:
            pass
    psutil.wait_procs(left, timeout=10)
    sup.wait()
    return sorted({p.pid for p in alive})


def checkpoint_record(fold: Path) -> str:
    import torch

    path = fold / "checkpoint_latest.pth"
    if not path.exists():
        return "no checkpoint_latest.pth"
    ckpt = torch.load(path, map_location="cpu", weights_only=False)
    rec = ckpt.get(STEP_KEY)
    head = f"current_epoch {ckpt.get('current_epoch')}, {STEP_KEY} "
    if not isinstance(rec, dict):
        return head + "absent"
    return head + (f"{{epoch {rec.get('epoch')}, steps_done {rec.get('steps_done')}, steps_total "
                   f"{rec.get('steps_total')}, outputs {len(rec.get('outputs') or [])}}}")


def notable_lines(*logs: Path) -> list[str]:
    out = []
    for log in logs:
        if log.exists():
            out += [f"{log.name}: {line.strip()}" for line in log.read_text(errors="replace").splitlines()
                    if NOTABLE.search(line)]
    return out


def attempt_logs(ctx: RunContext) -> dict[int, Path]:
    found = {}
    for p in ctx.layout.fold_dir.joinpath("supervisor").glob("attempt-*.log"):
        m = re.fullmatch(r"attempt-(\d+)\.log", p.name)
        if m:
            found[int(m.group(1))] = p
    return found


def interrupt(root: Path, raw: Path, pre: Path, way: str, notice: float | None) -> Outcome:
    name = f"{way}_{'kill' if notice is None else f'{notice:g}s'}"
    config, ctx, steps = configure(root, raw, pre, name, WAYS[way])
    fold = ctx.layout.fold_dir
    out = Outcome(name, notice)
    log1, log2 = root / f"{name}.supervisor.log", root / f"{name}.restart.log"
    sup = supervise(config, log1)
    try:
        wait_until(lambda: sum(1 for s in steps_of(steps) if s[0] == AT_EPOCH) >= AFTER_STEPS, 400,
                   f"{AFTER_STEPS} steps of epoch {AT_EPOCH}")
        _, marker, procs = trainer_tree(ctx, psutil.Process(sup.pid))
        t0, wall0 = time.monotonic(), time.time()
        if notice is not None:
            sup.send_signal(signal.SIGTERM)
            try:
                sup.wait(timeout=notice)
            except subprocess.TimeoutExpired:
                pass
        rc = sup.poll()
        if rc is not None:
            out.stop_s = time.monotonic() - t0
        alive = kill_everything(sup, marker, procs)
        if notice is None:
            out.stop = f"hard kill ({len(alive)} processes)"
        elif rc is not None:
            out.stop = f"supervisor exit {rc} after {out.stop_s:.1f} s" + (f", {len(alive)} left" if alive else "")
        else:
            out.stop = f"kill first: supervisor + {len(alive) - 1} alive at {notice:g} s"
        latest = fold / "checkpoint_latest.pth"
        out.saved_at = latest.stat().st_mtime - wall0 if latest.exists() else None
    finally:
        if sup.poll() is None:
            sup.kill()
            sup.wait()
    exits = [e for e in read_events(ctx.layout.fold_dir / "supervisor" / "events.jsonl") if e["event"] == "exit"]
    if exits and notice is not None and out.stop_s is not None:
        out.trainer_exit = f"{exits[-1].get('returncode')} ({exits[-1].get('classification')})"
    out.record = checkpoint_record(fold)
    before = max(attempt_logs(ctx), default=0)
    t1 = time.monotonic()
    with open(log2, "ab") as f:
        out.restart_rc = subprocess.run([sys.executable, "-m", "supervisor", "run", str(config)], stdout=f,
                                        stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, timeout=500).returncode
    out.restart_s = time.monotonic() - t1
    later = [p for n, p in sorted(attempt_logs(ctx).items()) if n > before]
    for p in later:
        out.resumed += [line.split("] ", 1)[-1].strip() for line in p.read_text(errors="replace").splitlines()
                        if "resuming epoch" in line or "runs whole" in line]
    out.steps = len(steps_of(steps))
    out.notable = notable_lines(log1, log2)
    return out


def uninterrupted(root: Path, raw: Path, pre: Path, name: str, coop: dict[str, Any]) -> dict[str, Any]:
    config, ctx, steps = configure(root, raw, pre, name, coop)
    log = root / f"{name}.supervisor.log"
    t0 = time.monotonic()
    sup = supervise(config, log)
    rc = sup.wait(timeout=500)
    gaps = intervals(steps_of(steps))
    return {"rc": rc, "wall_s": time.monotonic() - t0, "steps": len(steps_of(steps)), "gaps": gaps,
            "mean": statistics.fmean(gaps), "median": statistics.median(gaps), "fold": ctx.layout.fold_dir,
            "notable": notable_lines(log)}


def sizes(fold: Path) -> dict[str, Any]:
    """The tiny run's checkpoint, and a real 3d_fullres network's parameters and one snapshot's copy on this CPU."""
    import torch
    from nnunetv2.utilities.get_network_from_plans import get_network_from_plans

    from supervisor.trainer.cooperative import cpu_copy

    path = fold / "checkpoint_final.pth"
    ckpt = torch.load(path, map_location="cpu", weights_only=False)

    def nbytes(obj: Any) -> int:
        if isinstance(obj, dict):
            return sum(nbytes(v) for v in obj.values())
        if isinstance(obj, (list, tuple)):
            return sum(nbytes(v) for v in obj)
        return obj.numel() * obj.element_size() if isinstance(obj, torch.Tensor) else 0

    def unique(tensors: Any) -> list[Any]:
        return list({t.untyped_storage().data_ptr(): t for t in tensors}.values())

    def saved_size(obj: Any) -> int:
        buf = io.BytesIO()
        torch.save(obj, buf)
        return buf.tell()

    weights = ckpt["network_weights"]
    tiny_params = sum(t.numel() for t in unique(weights.values()) if t.is_floating_point())
    plans = json.loads((fold.parent / "plans.json").read_text())
    arch = plans["configurations"]["3d_fullres"]["architecture"]
    # nnU-Net's default 3d_fullres for a typical 128^3 patch (BraTS, KiTS, ...): 6 stages of 32..320 features
    kw = {**arch["arch_kwargs"], "n_stages": 6, "features_per_stage": [32, 64, 128, 256, 320, 320],
          "kernel_sizes": [[3, 3, 3]] * 6, "strides": [[1, 1, 1]] + [[2, 2, 2]] * 5,
          "n_conv_per_stage": [2] * 6, "n_conv_per_stage_decoder": [2] * 5}
    net = get_network_from_plans(arch["network_class_name"], kw, arch["_kw_requires_import"], 1, 2,
                                 allow_init=False, deep_supervision=True)
    real_params = sum(p.numel() for p in net.parameters())
    state = {"network_weights": net.state_dict(),
             "optimizer_state": {"state": {i: {"momentum_buffer": torch.zeros_like(p)}
                                           for i, p in enumerate(net.parameters())}}}
    times = []
    for _ in range(3):
        t0 = time.perf_counter()
        copied = cpu_copy(state)
        times.append(time.perf_counter() - t0)
    return {"tiny_params": tiny_params, "tiny_entries": sum(t.numel() for t in weights.values()),
            "tiny_optim": nbytes(ckpt["optimizer_state"]), "tiny_file": path.stat().st_size,
            "tiny_copied_file": saved_size(cpu_copy(ckpt)), "real_params": real_params,
            "real_bytes": nbytes(copied), "real_copy_s": min(times)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="fewer variants")
    ap.add_argument("--keep", action="store_true", help="leave the work folder")
    ap.add_argument("--work", type=Path, default=Path("/tmp/nnunet-supervise-bench-preempt"))
    args = ap.parse_args()
    root = args.work.resolve()
    root.mkdir(parents=True, exist_ok=True)
    cache = os.environ.get("NNUNET_SUPERVISE_TEST_CACHE")
    raw, pre, _ = make_dataset(Path(cache) if cache else root / "dataset")
    scenarios: list[tuple[str, float | None]] = [("epoch", 6), ("step", 6), ("snapshot", None)]
    if not args.quick:
        scenarios = [("epoch", 6), ("epoch", 30), ("step", 6), ("step", 30), ("snapshot", None), ("snapshot", 6)]
    t_start = time.monotonic()
    base = uninterrupted(root, raw, pre, "uninterrupted_none", {"enabled": True})
    size = sizes(base["fold"])
    snap = uninterrupted(root, raw, pre, "uninterrupted_snapshot1", {"enabled": True, "snapshot_every_s": 1.0})
    outcomes = []
    for way, notice in scenarios:
        try:
            outcomes.append(interrupt(root, raw, pre, way, notice))
        except Exception as exc:  # one broken scenario must not lose the others' numbers
            failed = Outcome(f"{way}_{'kill' if notice is None else f'{notice:g}s'}", notice)
            failed.stop, failed.steps = f"bench failed: {exc!r}"[:44], NEEDED
            outcomes.append(failed)
    step_s = base["mean"]

    print(f"machine: {os.cpu_count()} CPUs, python {sys.version.split()[0]}, load average "
          f"{os.getloadavg()[0]:.1f}; {TRAINER}: {EPOCHS} epochs x {STEPS} steps of {STEP_S} s sleep + compute, "
          f"CPU; interrupted after {AFTER_STEPS} steps of epoch {AT_EPOCH}; bench wall "
          f"{(time.monotonic() - t_start) / 60:.1f} min")
    print(f"uninterrupted (cooperative, no snapshots): exit {base['rc']}, {base['steps']} steps "
          f"(needed {NEEDED}), mean step {step_s:.3f} s, wall {base['wall_s']:.0f} s")
    head = f"{'variant':>14} {'notice':>7}  {'stop':<44} {'trainer':<24} {'restart':>7} {'steps':>5} " \
           f"{'redone':>6} {'lost (s)':>8}"
    print(head)
    for o in outcomes:
        redone = o.steps - NEEDED
        notice = "none" if o.notice is None else f"{o.notice:g} s"
        print(f"{o.name.split('_')[0]:>14} {notice:>7}  {o.stop:<44} {o.trainer_exit:<24} {o.restart_rc!s:>7} "
              f"{o.steps:>5} {redone:>6} {redone * step_s:>8.1f}")
    print("checkpoint_latest.pth after the stop (written: its mtime from the notice or hard kill), and what the "
          "restart said:")
    for o in outcomes:
        when = "" if o.saved_at is None else f" (written {o.saved_at:+.1f} s)"
        print(f"  {o.name:>14}: {o.record}{when}")
        print(f"  {'':>14}  restart {o.restart_s:.0f} s, exit {o.restart_rc}; " +
              ("; ".join(o.resumed) if o.resumed else "no 'resuming epoch' line (the epoch ran whole)"))
    ratio = snap["mean"] / base["mean"]
    print(f"snapshot overhead, uninterrupted runs: step time mean / median (s) none {base['mean']:.3f} / "
          f"{base['median']:.3f} ({len(base['gaps'])} intervals, exit {base['rc']}), snapshot_every_s 1 "
          f"{snap['mean']:.3f} / {snap['median']:.3f} ({len(snap['gaps'])} intervals, exit {snap['rc']})")
    print(f"snapshot_every_s 1 / none, mean step time = {ratio:.3f} (aim <= 1.03; "
          f"median {snap['median'] / base['median']:.3f})")
    mb = 1e6
    print(f"tiny network: {size['tiny_params'] / 1e6:.2f} M parameters ({size['tiny_entries'] / 1e6:.2f} M in its "
          f"state dict, which lists the encoder's tensors again under decoder.encoder), optimizer state "
          f"{size['tiny_optim'] / mb:.1f} MB; checkpoint as nnU-Net writes it {size['tiny_file'] / mb:.1f} MB, "
          f"through the shim's in-memory copy (a step save or snapshot) {size['tiny_copied_file'] / mb:.1f} MB")
    print(f"real 3d_fullres (6 stages, 32..320 features): {size['real_params'] / 1e6:.1f} M parameters = "
          f"{size['real_params'] * 4 / mb:.0f} MB fp32 weights + {size['real_params'] * 4 / mb:.0f} MB SGD momentum "
          f"(one buffer per parameter); the shim's copy of both (state dict entries as listed) is "
          f"{size['real_bytes'] / mb:.0f} MB: {size['real_copy_s'] * 1000:.0f} ms on this CPU (a GPU's device-to-host "
          f"copy at ~10 GB/s: {size['real_bytes'] / 10e9 * 1000:.0f} ms), i.e. {100 * size['real_copy_s']:.1f} % "
          f"of a 1 s snapshot interval, {100 * size['real_copy_s'] / 60:.2f} % of a 60 s one")
    notable = [(o.name, line) for o in outcomes for line in o.notable]
    notable += [(n, line) for n, r in (("uninterrupted_none", base), ("uninterrupted_snapshot1", snap))
                for line in r["notable"]]
    if notable:
        print("supervisor log lines worth a look:")
        for n, line in notable:
            print(f"  {n}: {line}")
    if not args.keep:
        shutil.rmtree(root, ignore_errors=True)
    else:
        print(f"kept {root}")


if __name__ == "__main__":
    main()
