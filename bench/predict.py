"""Supervised prediction vs plain `nnUNetv2_predict` and its bash retry loop, side by side in one run.

    .venv/bin/python bench/predict.py [--cases N] [--cache DIR] [--rounds R] [--keep]

A fold of the tiny dataset is trained once with the demo trainer (nnUNetv2_train on the CPU, ~1 min) and kept in
--cache (default /tmp/nnunet-supervise-bench-predict: raw, preprocessed, results); N test images like the dataset's
(default 16, nnU-Net's layout CASE_0000.nii.gz) are made fresh in a work folder (a temporary one, kept with
--keep). One export and one preprocessing process everywhere (nnUNet_npp = nnUNet_nps = nnUNet_def_n_proc = 1).

1. Overhead: `nnUNetv2_predict` and `nnunet-supervise predict run.yaml -o OUT` over the same cases, alternated
   (plain, supervised, plain, supervised ...: drift on a noisy machine hits both alike), a fresh output folder each
   time (R pairs, default 3). Printed: each wall-clock, supervised / plain, the overhead in seconds and per case
   (aim: <= 3 %; on this tiny network the fixed costs dominate), and where the supervised run's time went: before
   the launch (the supervisor's start and checks), the predictor's own life (sampled alike on both sides), after its
   exit (the tree stopped, every output verified in a subprocess, the supervisor's exit).
2. Kills: the supervised prediction's nnUNetv2_predict (its pid from <out>/supervisor/state.json) SIGKILLed twice
   while cases are written (at N/3 and 2N/3 outputs), and one output written before the first kill truncated to
   half right after it (what a predictor killed mid-write leaves). Beside it the bash loop
   `until nnUNetv2_predict ... --continue_prediction; do :; done` gets the same two kills and the same torn output.
   Counted: the cases predicted more than once (a "Predicting CASE:" line in more than one attempt), besides the
   torn one (aim: <= the cases in flight at the kills, i.e. started and without an output yet), the outputs that
   existed at a kill and changed after it (still being written by the killed predictor's export worker, or
   quarantined and predicted again; "after the relaunch began": when the relaunch, which counts an existing file as
   done, was already running), the processes left behind, and at the end every output read in full by the
   supervisor's own verifier (supervisor.predicted): the torn outputs the loop keeps (it skips every existing file:
   expect 1) vs the supervised run (expect 0: quarantined, predicted again, exit 0).

The supervised runs use restart.backoff_initial_s 1 (default 10): a kill costs it 1 s of waiting (the loop relaunches
at once).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psutil

from supervisor.demo.dataset import DATASET_ID, DATASET_NAME, make_dataset, nnunet_env, write_raw_dataset
from supervisor.demo.runyaml import DEMO_TRAINER, QUIET_ENV, TRAINERS, write_demo_config
from supervisor.predicted.verify import verify_outputs
from supervisor.rundir.eventlog import read_events
from supervisor.rundir.statefile import StateStore

BIN = Path(sys.executable).parent
ENDING = ".nii.gz"
PREDICTING = re.compile(r"^Predicting (\S+):$", re.M)  # nnU-Net 2.8's line as it starts a case
ATTEMPT_START = re.compile(r"^There are \d+ cases that I would like to predict$", re.M)
ONE_PROCESS = {**QUIET_ENV, "nnUNet_npp": "1", "nnUNet_nps": "1"}
MARK = "NNUNET_SUPERVISE_BENCH"  # inherited by every process of a variant: what is left of it is found by it
CAP_S = 400.0  # one variant's run at most


def trained_fold(cache: Path) -> tuple[Path, Path, Path]:
    """(raw, preprocessed, results) with fold 0 of the tiny dataset trained to checkpoint_final.pth (once)."""
    raw, pre, results = make_dataset(cache)
    fold = results / DATASET_NAME / f"{DEMO_TRAINER}__nnUNetPlans__3d_fullres" / "fold_0"
    if not (fold / "checkpoint_final.pth").exists():
        print(f"training fold 0 of {DATASET_NAME} with {DEMO_TRAINER} into {results} (once) ...", flush=True)
        env = {**nnunet_env(raw, pre, results), "nnUNet_extTrainer": str(TRAINERS)}
        with open(cache / "train.log", "wb") as log:
            subprocess.run([str(BIN / "nnUNetv2_train"), str(DATASET_ID), "3d_fullres", "0", "-tr", DEMO_TRAINER,
                            "-device", "cpu"], env=env, stdout=log, stderr=subprocess.STDOUT,
                           stdin=subprocess.DEVNULL, check=True)
    return raw, pre, results


def plain_argv(images: Path, out: Path, resume: bool) -> list[str]:
    return [str(BIN / "nnUNetv2_predict"), "-i", str(images), "-o", str(out), "-d", str(DATASET_ID),
            "-tr", DEMO_TRAINER, "-p", "nnUNetPlans", "-c", "3d_fullres", "-f", "0", "-chk", "checkpoint_final.pth",
            "-device", "cpu", *(["--continue_prediction"] if resume else [])]


class Bench:
    def __init__(self, work: Path, raw: Path, pre: Path, results: Path, cases: int) -> None:
        self.work, self.results = work, results
        self.images = write_raw_dataset(work / "test-raw", cases, seed=1) / "imagesTr"
        self.cases = sorted(p.name[: -len("_0000" + ENDING)] for p in self.images.glob(f"*_0000{ENDING}"))
        self.env = {**nnunet_env(raw, pre, results), "nnUNet_extTrainer": str(TRAINERS), **ONE_PROCESS,
                    "PYTHONUNBUFFERED": "1"}  # as the supervisor sets it for its child: the log is whole at a kill
        self.config = write_demo_config(work / "run.yaml", raw, pre, results, nnunet={"env": dict(ONE_PROCESS)},
                                        restart={"backoff_initial_s": 1, "backoff_max_s": 5},
                                        predict={"input": str(self.images), "output": str(work / "pred")})

    # ---- the two ways to predict ----

    def start(self, variant: str, out: Path, mark: str) -> subprocess.Popen[bytes]:
        shutil.rmtree(out, ignore_errors=True)
        out.mkdir(parents=True)
        log = open(out.parent / f"{out.name}.log", "ab")
        env = {**self.env, MARK: mark}
        if variant == "plain":
            argv = plain_argv(self.images, out, False)
        elif variant == "loop":
            argv = ["bash", "-c", f"until {' '.join(plain_argv(self.images, out, True))}; do :; done"]
        else:
            env = {**os.environ, MARK: mark}  # the supervisor sets the rest from run.yaml
            argv = [sys.executable, "-m", "supervisor", "predict", str(self.config), "-o", str(out)]
        return subprocess.Popen(argv, env=env, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                start_new_session=True)

    def seg(self, out: Path, case: str) -> Path:
        return out / f"{case}{ENDING}"

    def written(self, out: Path) -> dict[str, os.stat_result]:
        found = {}
        for case in self.cases:
            with contextlib.suppress(OSError):
                found[case] = os.stat(self.seg(out, case))
        return found

    def at_least(self, out: Path, k: int) -> Callable[[], bool]:
        return lambda: len(self.written(out)) >= k

    def unusable(self, out: Path) -> list[str]:
        """Cases without an output that the supervisor's verifier reads in full and finds its input's."""
        have = self.written(out)
        requests = [{"case": c, "input": [str(self.images / f"{c}_0000{ENDING}")], "outputs": [str(self.seg(out, c))],
                     "probabilities": False} for c in self.cases if c in have]
        bad = [v.case for v in verify_outputs(requests, os.environ) if not v.ok]
        return sorted(bad + [c for c in self.cases if c not in have])

    # ---- 1. overhead ----

    def timed(self, variant: str, out: Path) -> dict[str, Any]:
        wall0 = time.time()
        t0 = time.monotonic()
        proc = self.start(variant, out, f"{variant}-{out.name}")
        # the predictor's own life, sampled alike on both sides: its start (the kernel's) and when it was gone
        pid: int | None = proc.pid if variant == "plain" else None
        born = gone = None
        cpu = 0.0  # the supervisor process's own CPU seconds (not its children's), last sampled
        while proc.poll() is None and time.monotonic() - t0 < CAP_S:
            if variant == "supervised":
                with contextlib.suppress(psutil.Error):
                    times = psutil.Process(proc.pid).cpu_times()
                    cpu = times.user + times.system
            if pid is None:
                pid = self.predictor(variant, proc, out, set())
            if pid is not None and born is None:
                with contextlib.suppress(psutil.Error):
                    born = psutil.Process(pid).create_time()
            if pid is not None and gone is None and not _alive(pid):
                gone = time.time()
            time.sleep(0.05)
        code = proc.wait(timeout=1)
        end = time.time()
        r: dict[str, Any] = {"wall_s": time.monotonic() - t0, "exit": code, "missing": len(self.cases) -
                             len(self.written(out))}
        if variant == "supervised":
            events = list(read_events(out / "supervisor" / "events.jsonl"))
            r["launches"] = sum(1 for e in events if e["event"] == "launch")
            r["cpu_s"] = cpu
            if born is not None:
                gone = gone or end
                r["phases"] = {"before the launch": born - wall0, "predictor": gone - born,
                               "after its exit": end - gone}
        return r

    # ---- 2. and 3. kills ----

    def predictor(self, variant: str, proc: subprocess.Popen[bytes], out: Path, killed: set[int]) -> int | None:
        """The live nnUNetv2_predict main process of this variant that was not killed yet."""
        if variant == "loop":
            try:
                kids = psutil.Process(proc.pid).children()
            except psutil.Error:
                return None
            pids = [k.pid for k in kids if k.pid not in killed and _is_predictor(k)]
            return pids[0] if pids else None
        pid = StateStore(out / "supervisor" / "state.json").load().get("pid")
        if not isinstance(pid, int) or pid in killed:
            return None
        try:
            return pid if _is_predictor(psutil.Process(pid)) else None
        except psutil.Error:
            return None

    def attempt_logs(self, variant: str, out: Path) -> list[str]:
        if variant == "loop":
            text = (out.parent / f"{out.name}.log").read_text(errors="replace")
            return ATTEMPT_START.split(text)[1:]
        logs = sorted((out / "supervisor").glob("attempt-*.log"), key=lambda p: int(p.stem.split("-")[1]))
        return [p.read_text(errors="replace") for p in logs]

    def killed_run(self, variant: str) -> dict[str, Any]:
        out = self.work / f"{variant}-kills"
        n = len(self.cases)
        t0 = time.monotonic()
        proc = self.start(variant, out, f"{variant}-kills")
        killed: set[int] = set()
        kills: list[dict[str, Any]] = []
        torn: tuple[str, os.stat_result] | None = None
        try:
            pid = _wait(lambda: self.predictor(variant, proc, out, killed), proc, t0, "a predictor to kill")
            for target in (n // 3, 2 * n // 3):
                goal = max(target, len(self.written(out)) + 1)  # at least one written by this attempt
                _wait(self.at_least(out, goal), proc, t0, f"{goal} outputs")
                os.kill(pid, signal.SIGKILL)
                at_kill = self.written(out)
                killed.add(pid)
                started = set(PREDICTING.findall(self.attempt_logs(variant, out)[-1]))
                kill = {"at": len(at_kill), "stats": at_kill, "in_flight": sorted(started - set(at_kill))}
                kills.append(kill)
                if torn is None:  # one output written before the kill, cut as a write killed midway leaves it
                    victim = min(at_kill, key=lambda c: at_kill[c].st_mtime_ns)
                    path = self.seg(out, victim)
                    with open(path, "r+b") as f:
                        f.truncate(at_kill[victim].st_size // 2)
                    torn = (victim, os.stat(path))
                # the relaunch (None: the run ended first): when it started, to tell what it found on the disk
                found = _wait(lambda: self.predictor(variant, proc, out, killed) or proc.poll() is not None, proc,
                              t0, "the relaunch", end_ok=True)
                pid = None if found is True else found
                if pid is not None:
                    with contextlib.suppress(psutil.Error):
                        kill["relaunched_at"] = psutil.Process(pid).create_time()
            code = proc.wait(timeout=max(1.0, CAP_S - (time.monotonic() - t0)))
        finally:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
        wall = time.monotonic() - t0
        left = _leftovers(f"{variant}-kills")
        assert torn is not None
        final = self.written(out)
        runs: dict[str, int] = {}
        logs = self.attempt_logs(variant, out)
        for text in logs:
            for case in set(PREDICTING.findall(text)):
                runs[case] = runs.get(case, 0) + 1
        twice = sorted(c for c, k in runs.items() if k > 1 and c != torn[0])
        # an output there at a kill that changed after it: still being written by the killed predictor's export
        # worker (same file, grown), or quarantined and predicted again (a new file); "late": it changed after the
        # relaunch had started, which had counted it as done by its existence (--continue_prediction)
        rewritten: list[str] = []
        finished: list[str] = []
        late: list[str] = []
        for k in kills:
            for c, st in k["stats"].items():
                if c == torn[0] or c not in final or (final[c].st_ino, final[c].st_mtime_ns) == (st.st_ino,
                                                                                               st.st_mtime_ns):
                    continue
                (finished if final[c].st_ino == st.st_ino else rewritten).append(c)
                if final[c].st_ino == st.st_ino and final[c].st_mtime > k.get("relaunched_at", float("inf")):
                    late.append(c)
        unusable = self.unusable(out)
        quarantined: list[str] = []
        if variant == "supervised":
            quarantined = [str(e.get("case")) for e in read_events(out / "supervisor" / "events.jsonl")
                           if e["event"] == "output_corrupt"]
        return {"exit": code, "wall_s": wall, "attempts": len(logs), "kills": kills, "twice": twice,
                "torn_redone": runs.get(torn[0], 0) > 1, "rewritten": sorted(set(rewritten)),
                "finished": sorted(set(finished)),
                "late": sorted(set(late)), "torn_case": torn[0],
                "unusable": unusable, "quarantined": quarantined, "left_behind": left}


def _is_predictor(p: psutil.Process) -> bool:
    try:
        return any(c.endswith("nnUNetv2_predict") for c in p.cmdline()[:2])
    except psutil.Error:
        return False


def _wait(predicate: Callable[[], Any], proc: subprocess.Popen[bytes], t0: float, what: str,
          end_ok: bool = False) -> Any:
    while True:
        value = predicate()
        if value:
            return value
        if proc.poll() is not None and not end_ok:
            raise RuntimeError(f"the run ended (exit {proc.returncode}) before {what}")
        if time.monotonic() - t0 > CAP_S:
            raise RuntimeError(f"timed out waiting for {what}")
        time.sleep(0.02)


def _alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def _leftovers(mark: str) -> int:
    """Processes of a variant still alive after it ended (then ended, so they do not load the next one)."""
    left = []
    for p in psutil.process_iter(["environ"]):
        with contextlib.suppress(psutil.Error):
            if (p.info["environ"] or {}).get(MARK) == mark and p.status() != psutil.STATUS_ZOMBIE:
                left.append(p)
    for p in left:
        with contextlib.suppress(psutil.Error):
            p.kill()
    return len(left)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--cases", type=int, default=16, help="test images to predict (default 16)")
    ap.add_argument("--cache", type=Path, default=Path("/tmp/nnunet-supervise-bench-predict"),
                    help="where the tiny dataset and its trained fold are kept between runs")
    ap.add_argument("--rounds", type=int, default=3, help="plain/supervised pairs timed (default 3)")
    ap.add_argument("--keep", action="store_true", help="keep the work folder (outputs, logs, run dirs)")
    args = ap.parse_args()
    if args.cases < 6:
        ap.error("--cases: at least 6 (two kills while cases are written)")
    cache = args.cache.resolve()
    cache.mkdir(parents=True, exist_ok=True)
    raw, pre, results = trained_fold(cache)
    work = Path(tempfile.mkdtemp(prefix="predict-bench-"))
    try:
        bench = Bench(work, raw, pre, results, args.cases)
        n = len(bench.cases)
        print(f"machine: {os.cpu_count()} CPUs, python {sys.version.split()[0]}; {n} cases of {DATASET_NAME} "
              f"({'x'.join(map(str, (24, 32, 32)))}), fold 0 of {DEMO_TRAINER}, CPU, npp = nps = 1; load average "
              f"{os.getloadavg()[0]:.2f}; work {work}",
              flush=True)
        timed: dict[str, list[dict[str, Any]]] = {"plain": [], "supervised": []}
        for r in range(args.rounds):
            for variant in ("plain", "supervised"):
                row = bench.timed(variant, work / f"{variant}-{r}")
                timed[variant].append(row)
                extra = ""
                if variant == "supervised":
                    ph = row.get("phases") or {}
                    extra = f", {row['launches']} launch(es); " + ", ".join(f"{k} {v:.2f} s" for k, v in ph.items()) \
                        + f"; the supervisor's own CPU {row['cpu_s']:.2f} s"
                print(f"overhead round {r + 1}: {variant:>10} {row['wall_s']:7.2f} s, exit {row['exit']}, "
                      f"{row['missing']} case(s) without output{extra}", flush=True)
        plain = [row["wall_s"] for row in timed["plain"]]
        sup = [row["wall_s"] for row in timed["supervised"]]
        ratios = [s / p for s, p in zip(sup, plain, strict=True)]
        alone = [row["phases"]["predictor"] for row in timed["supervised"] if "phases" in row]
        extra_s = statistics.mean(s - p for s, p in zip(sup, plain, strict=True))
        print(f"supervised / plain per round: {', '.join(f'{x:.3f}' for x in ratios)}; mean walls plain "
              f"{statistics.mean(plain):.2f} s, supervised {statistics.mean(sup):.2f} s; overhead "
              f"{extra_s:+.2f} s per prediction, {1000 * extra_s / n:+.0f} ms per case (aim <= 3 %: "
              f"{'met' if statistics.mean(ratios) <= 1.03 else 'NOT met'} at {n} cases)", flush=True)
        if alone:
            per = ", ".join(f"{a / p:.3f}" for a, p in zip(alone, plain, strict=False))
            print(f"the supervised nnUNetv2_predict's own life / plain's wall: {per} "
                  f"(mean {statistics.mean(alone) / statistics.mean(plain):.3f}); the rest is the supervisor's "
                  f"start and checks before the launch, and after the predictor's exit the tree's stop, the outputs' "
                  f"verification and the supervisor's exit", flush=True)

        kills = {variant: bench.killed_run(variant) for variant in ("supervised", "loop")}
        for variant, k in kills.items():
            at = ", ".join(f"at {x['at']}/{n} outputs ({len(x['in_flight'])} in flight: "
                           f"{' '.join(x['in_flight']) or '-'})" for x in k["kills"])
            print(f"{variant:>10} with 2 kills: exit {k['exit']}, {k['wall_s']:.1f} s, {k['attempts']} attempt(s); "
                  f"killed {at}; torn {k['torn_case']}", flush=True)
            print(f"{'':>10} predicted more than once (besides the torn one): {' '.join(k['twice']) or '-'}; "
                  f"there at a kill and finished after it (the same file, by the killed predictor's exporter): "
                  f"{' '.join(k['finished']) or '-'}; written anew: {' '.join(k['rewritten']) or '-'}; torn one "
                  f"predicted again: {k['torn_redone']}; unusable at the end: {' '.join(k['unusable']) or '-'}; "
                  f"quarantined: {' '.join(k['quarantined']) or '-'}; processes left behind: {k['left_behind']}",
                  flush=True)
            if k["late"]:
                print(f"{'':>10} still being written by the killed predictor after the relaunch had started (which "
                      f"counted it as done): {' '.join(k['late'])}", flush=True)

        s, b = kills["supervised"], kills["loop"]
        in_flight = {v: sum(len(x["in_flight"]) for x in k["kills"]) for v, k in kills.items()}
        print()
        print(f"{'':44}{'plain':>12}{'supervised':>12}")
        print(f"{'wall, mean of ' + str(args.rounds) + ' (s)':44}{statistics.mean(plain):12.2f}"
              f"{statistics.mean(sup):12.2f}   ratio {statistics.mean(ratios):.3f} "
              f"({extra_s:+.2f} s, {1000 * extra_s / n:+.0f} ms/case; aim <= 1.03)")
        print(f"{'':44}{'bash loop':>12}{'supervised':>12}")
        print(f"{'cases predicted twice per kill':44}{len(b['twice']) / 2:12.1f}{len(s['twice']) / 2:12.1f}"
              f"   (in flight per kill: {in_flight['loop'] / 2:.1f} / {in_flight['supervised'] / 2:.1f}; aim <= it)")
        print(f"{'outputs still being written after a kill':44}{len(b['finished']):12d}{len(s['finished']):12d}"
              f"   (of them after the relaunch began: {len(b['late'])} / {len(s['late'])})")
        print(f"{'outputs there at a kill, written anew':44}{len(b['rewritten']):12d}{len(s['rewritten']):12d}"
              f"   (the torn one aside)")
        print(f"{'torn or missing outputs at the end':44}{len(b['unusable']):12d}{len(s['unusable']):12d}"
              f"   (expect 1 / 0)")
        print(f"{'every case one verified output, exit 0':44}{not b['unusable'] and b['exit'] == 0!s:>12}"
              f"{not s['unusable'] and s['exit'] == 0!s:>12}")
        print(f"{'wall with 2 kills (s)':44}{b['wall_s']:12.1f}{s['wall_s']:12.1f}   (supervised: backoff 1 s "
              f"after each kill)")
        print(f"{'processes left behind':44}{b['left_behind']:12d}{s['left_behind']:12d}"
              f"   (the killed predictors' workers, alive after the run ended)")
        print(f"load average at the end: {os.getloadavg()[0]:.2f} (1 min), {os.getloadavg()[1]:.2f} (5 min)")
    finally:
        if args.keep:
            print(f"kept {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
