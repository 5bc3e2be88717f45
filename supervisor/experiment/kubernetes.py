"""An experiment as Kubernetes Jobs, rendered by pure functions: a ConfigMap with the experiment file, an Indexed
Job over the cells (index -> cell through a table in the pod's command), one for the cascade's cells and one for
find_best_configuration, each waiting (an init container) until what it needs has finished. With a predict section,
two more: an Indexed Job of one index per part of the prediction (`predict EXPERIMENT --part K/N`), waiting for
find_best, and a Job for the prediction's tail (`predict EXPERIMENT`: every part's outputs checked, what a part left
predicted, ensembled, postprocessed), waiting until every part has ended (`wait_prediction`, below).

Our exit codes are the engine's retry rules (`podFailurePolicy`): 75 (stopped resumably) and a disruption
(preemption, a node drained) are not failures, the index is simply run again; 1, 2, 3 (gave up, bad config,
locked) fail that index at once; anything else (70, a killed pod) counts against `backoffLimitPerIndex`.
`podReplacementPolicy: Failed` keeps two pods of one index from ever training one fold at once.
"""

from __future__ import annotations

import re
import shlex
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml

from supervisor.core.rules import stop_deadline_s
from supervisor.errors import ConfigError, ExitCode
from supervisor.experiment.context import Cell, ExperimentContext
from supervisor.experiment.findbest import INFORMATION, find_best_done, mtime, trained_ts
from supervisor.experiment.slurmchain import row, waiting_cells
from supervisor.layout import PipelineLayout
from supervisor.rundir.lock import RunLock
from supervisor.rundir.statefile import StateStore
from supervisor.stages.prediction.parts import Part, parts_wanted

CONFIG_DIR = "/etc/nnunet-supervise"
CONTAINER = "fold"
PREDICT_CONTAINER = "predict"
WAIT_CONTAINER = "wait"
LABEL = "nnunet-supervise/experiment"
# an init container's way to wait for what `wait` does not know (find_best's output, the prediction's parts)
WAIT_PREDICTION = ("import sys; from supervisor.experiment.kubernetes import wait_prediction; "
                   "sys.exit(wait_prediction(sys.argv[1:]))")


def dns_name(text: str) -> str:
    """A Kubernetes object name (RFC 1123 label: lowercase letters, digits, '-'; at most 63)."""
    name = re.sub(r"[^a-z0-9-]+", "-", text.lower()).strip("-")
    return (name or "nnunet")[:63].rstrip("-")


def resolved_document(exp: ExperimentContext) -> dict[str, Any]:
    """The experiment file as the pods read it: every path absolute (they mount the same paths)."""
    doc = exp.spec.model_dump(mode="json", exclude={"kubernetes"})
    doc["paths"] = {"nnUNet_raw": None if exp.paths.raw is None else str(exp.paths.raw),
                    "nnUNet_preprocessed": str(exp.paths.preprocessed), "nnUNet_results": str(exp.paths.results)}
    base = exp.config_path.parent
    doc["nnunet"]["trainer_paths"] = [str((base / p).resolve()) for p in exp.spec.nnunet.trainer_paths]
    for key in ("input", "output"):  # relative to the file's folder, which in a pod is the ConfigMap's
        if doc.get("predict", {}).get(key) is not None:
            doc["predict"][key] = str((base / doc["predict"][key]).resolve())
    return doc


def parallelism(exp: ExperimentContext, cells: int) -> int:
    k8s, devices = exp.spec.kubernetes, exp.spec.experiment.devices
    if k8s.parallelism is not None:
        return min(k8s.parallelism, cells)
    if exp.spec.nnunet.device != "cuda":
        return min(devices.slots, cells)
    if isinstance(devices.gpus, list):
        return min(len(devices.gpus) * (devices.per_gpu if isinstance(devices.per_gpu, int) else 1), cells)
    return cells  # gpus: auto: as many as the cluster (or its queue, e.g. Kueue) admits


def grace_s(exp: ExperimentContext) -> int:
    """Room for SIGTERM to become a cooperative save (at the next step, or the epoch end), then the tree's stop."""
    coop = exp.spec.cooperative
    return stop_deadline_s(exp.spec.process.stop_grace_s, coop.enabled, coop.save_on_stop, coop.stop_timeout_s)


def _pod(exp: ExperimentContext, name: str, command: str, gpus: int, wait_for: list[str] | None,
         then: tuple[tuple[str, list[str]], ...] = (), container_name: str = CONTAINER,
         wait_command: list[str] | None = None) -> dict[str, Any]:
    """A pod template; wait_for: an init container `wait` for those configurations' folds (all of them: []), then
    one init container per (name, command) of `then`, in order."""
    k8s = exp.spec.kubernetes
    folders = {"nnUNet_raw": exp.paths.raw, "nnUNet_preprocessed": exp.paths.preprocessed,
               "nnUNet_results": exp.paths.results}
    env = [{"name": k, "value": str(v)} for k, v in folders.items() if v is not None]
    env.append({"name": "PYTHONUNBUFFERED", "value": "1"})
    mounts = [{"name": "experiment", "mountPath": CONFIG_DIR, "readOnly": True},
              {"name": "dshm", "mountPath": "/dev/shm"}]
    volumes: list[dict[str, Any]] = [
        {"name": "experiment", "configMap": {"name": f"{name}-experiment"}},
        {"name": "dshm", "emptyDir": {"medium": "Memory", "sizeLimit": k8s.shm_size}}]
    for folder, source in sorted(k8s.volumes.items()):
        path = folders[folder]
        if path is None:
            continue
        vol = dns_name(folder)
        mounts.append({"name": vol, "mountPath": str(path)})
        volumes.append({"name": vol, **({"persistentVolumeClaim": {"claimName": source.pvc}} if source.pvc
                                        else {"hostPath": {"path": source.host_path, "type": "Directory"}})})
    resources: dict[str, Any] = {}
    requests = {k: v for k, v in (("cpu", k8s.cpu), ("memory", k8s.memory)) if v is not None}
    if requests:
        resources["requests"] = requests
    if gpus:
        resources["limits"] = {"nvidia.com/gpu": gpus}
    container = {"name": container_name, "image": k8s.image, "command": ["bash", "-c", command], "env": env,
                 "volumeMounts": mounts, **({"resources": resources} if resources else {})}
    spec: dict[str, Any] = {"restartPolicy": "Never", "terminationGracePeriodSeconds": grace_s(exp),
                            "containers": [container], "volumes": volumes}
    init: list[tuple[str, list[str]]] = []
    if wait_for is not None:
        # start only once what this Job needs has finished. The scheduler counts the pod's GPU from the moment it is
        # placed, so a waiting cascade pod holds a GPU: apply 30-cascade-job.yaml later where GPUs are few (README);
        # the same for the prediction's pods, which wait for find_best
        init.append((WAIT_CONTAINER, wait_command or [
            "python", "-m", "supervisor", "wait", f"{CONFIG_DIR}/experiment.yaml",
            *[a for c in wait_for for a in ("--configuration", c)]]))
    init += then
    if init:
        spec["initContainers"] = [{"name": n, "image": k8s.image, "env": env, "volumeMounts": mounts, "command": c}
                                  for n, c in init]
    return {"metadata": {"labels": {LABEL: name}}, "spec": spec}


def _cells_job(exp: ExperimentContext, name: str, key: str, cells: list[Cell],
               wait_for: list[str] | None) -> dict[str, Any]:
    table = " ".join(shlex.quote(" ".join(row(c))) for c in cells)
    # each index reads its own row of the table (in a study its trainer and plans too)
    fields = "CONFIGURATION FOLD TRAINER PLANS" if exp.is_study else "CONFIGURATION FOLD"
    lookup = ["set -euo pipefail", f"CELLS=({table})  # index -> ({', '.join(fields.lower().split())})",
              f'read -r {fields} <<< "${{CELLS[$JOB_COMPLETION_INDEX]}}"']
    own = ' --trainer "${TRAINER}" --plans "${PLANS}"' if exp.is_study else ""
    said = "${TRAINER} ${PLANS} " if exp.is_study else ""
    command = "\n".join([
        *lookup,
        f'echo "nnunet-supervise: index ${{JOB_COMPLETION_INDEX}}: {said}${{CONFIGURATION}} fold ${{FOLD}}"',
        f'exec python -m supervisor run {CONFIG_DIR}/experiment.yaml --configuration "${{CONFIGURATION}}" '
        f'--fold "${{FOLD}}"{own}'])
    wait_command = None
    if exp.is_study and wait_for:
        # each index waits for the stage before it of its own trainer and plans: a lowres fold of one trainer that
        # gave up fails that trainer's cascade only (the Kubernetes docs' own Indexed Job example reads
        # JOB_COMPLETION_INDEX in an init container)
        wait_command = ["bash", "-c", "\n".join([
            *lookup,
            f"exec python -m supervisor wait {CONFIG_DIR}/experiment.yaml "
            + " ".join(f"--configuration {shlex.quote(c)}" for c in wait_for) + own])]
    gpus = exp.spec.nnunet.num_gpus if exp.spec.nnunet.device == "cuda" else 0
    return _indexed_job(exp, name, key, len(cells), parallelism(exp, len(cells)),
                        _pod(exp, name, command, gpus, wait_for, wait_command=wait_command), CONTAINER,
                        wait_for is not None)


HOPELESS = (ExitCode.GAVE_UP, ExitCode.USAGE, ExitCode.LOCKED)


def _retry_rules(container: str, waits: bool, fail: str,
                 hopeless: tuple[ExitCode, ...] = HOPELESS) -> list[dict[str, Any]]:
    """Our exit codes as the Job's retry rules; fail: what a hopeless exit fails (FailIndex, or FailJob for a Job
    that is not Indexed)."""
    return [
        {"action": "Ignore", "onPodConditions": [{"type": "DisruptionTarget"}]},
        {"action": "Ignore", "onExitCodes": {"containerName": container, "operator": "In",
                                             "values": [int(ExitCode.STOPPED)]}},
        {"action": fail, "onExitCodes": {"containerName": container, "operator": "In",
                                         "values": [int(c) for c in hopeless]}},
        *([{"action": fail, "onExitCodes": {"containerName": WAIT_CONTAINER, "operator": "In",
                                            "values": [int(ExitCode.GAVE_UP)]}}]
          if waits else []),  # the stage it waits for gave up: retrying cannot help
    ]


def _indexed_job(exp: ExperimentContext, name: str, key: str, completions: int, at_once: int,
                 template: dict[str, Any], container: str, waits: bool) -> dict[str, Any]:
    return {
        "apiVersion": "batch/v1", "kind": "Job",
        "metadata": _meta(exp, f"{name}-{key}", name),
        "spec": {
            "completionMode": "Indexed", "completions": completions, "parallelism": at_once,
            "backoffLimitPerIndex": exp.spec.restart.max_restarts,
            "podReplacementPolicy": "Failed",
            "podFailurePolicy": {"rules": _retry_rules(container, waits, "FailIndex")},
            "template": template}}


def prediction_parts(exp: ExperimentContext) -> int | None:
    """How many parts the prediction is cut into (one index each), or None: no predict section, no prediction."""
    if not exp.predicts:  # the experiment file makes sure of predict.input and experiment.find_best with it
        return None
    devices = exp.spec.experiment.devices
    return parts_wanted(exp.spec.predict.parts, exp.spec.nnunet.device, devices.gpus, devices.slots)


def _unmounted(exp: ExperimentContext) -> list[str]:
    """The prediction's folders a pod would not see: inside none of the folders `volumes` mounts (none mounted:
    the file's paths are the image's own, as for the training)."""
    folders = {"nnUNet_raw": exp.paths.raw, "nnUNet_preprocessed": exp.paths.preprocessed,
               "nnUNet_results": exp.paths.results}
    mounts = [m for m in (folders[f] for f in exp.spec.kubernetes.volumes) if m is not None]
    problems = []
    for key in ("input", "output"):
        path = (exp.config_path.parent / str(getattr(exp.spec.predict, key))).resolve()
        if mounts and not any(m == path or m in path.parents for m in mounts):
            problems.append(f"predict.{key}: {path} is inside none of the folders kubernetes.volumes mounts "
                            f"({', '.join(str(m) for m in mounts)}): the prediction's pods would not see it; "
                            "put it under one of them")
    return problems


def _prediction_jobs(exp: ExperimentContext, name: str, n: int) -> dict[str, dict[str, Any]]:
    problems = _unmounted(exp)
    if problems:
        raise ConfigError(problems, str(exp.config_path))
    config = f"{CONFIG_DIR}/experiment.yaml"
    gpus = 1 if exp.spec.nnunet.device == "cuda" else 0  # nnUNetv2_predict predicts on one GPU
    # `wait` (every fold finished; 1 when one gave up: FailIndex / FailJob), then find_best's output, newer than every
    # fold (an earlier find_best's choice is not this one's)
    find_best = (("wait-find-best", ["python", "-c", WAIT_PREDICTION, config, "find-best"]),)
    command = "\n".join([
        "set -euo pipefail",
        f'echo "nnunet-supervise: index ${{JOB_COMPLETION_INDEX}}: prediction part ${{JOB_COMPLETION_INDEX}}/{n}"',
        f'exec python -m supervisor predict {config} --part "${{JOB_COMPLETION_INDEX}}/{n}"'])
    parts = _indexed_job(exp, name, "predict-parts", n, n,
                         _pod(exp, name, command, gpus, [], find_best, PREDICT_CONTAINER), PREDICT_CONTAINER, True)
    # The tail starts once every part has ended for good, as SLURM's afterany: each part's pipeline.json, written
    # after the last fold finished, has an exit code other than 75 (a part stopped resumably runs again) and no
    # live supervisor holds its lock. That includes a part that ended 1 with a poison case set aside (the tail
    # ensembles and postprocesses every other case and names the failed ones, exit 1) and one that crashed (70):
    # the tail predicts what it left (it takes the whole prediction's lock; a part pod started again meanwhile
    # finds it held, exit 3). A part killed outright (OOM, a lost node) leaves "running" behind, and its index
    # is run again: the tail waits for that. It has a GPU: it predicts whatever a part left.
    tail_waits = (*find_best, ("wait-parts", ["python", "-c", WAIT_PREDICTION, config, "parts", str(n)]))
    tail_pod = _pod(exp, name, f"exec python -m supervisor predict {config} --no-parts", gpus, [], tail_waits,
                    PREDICT_CONTAINER)
    tail = {"apiVersion": "batch/v1", "kind": "Job", "metadata": _meta(exp, f"{name}-predict", name),
            "spec": {"backoffLimit": 2, "podReplacementPolicy": "Failed",
                     # 3 (a part's supervisor still holds its cases) is counted, not hopeless: it ends
                     "podFailurePolicy": {"rules": _retry_rules(PREDICT_CONTAINER, True, "FailJob",
                                                                (ExitCode.GAVE_UP, ExitCode.USAGE))},
                     "template": tail_pod}}
    return {"50-predict-parts-job.yaml": parts, "60-predict-job.yaml": tail}


# ---- inside a pod: the init containers' waits for the prediction ----

def parts_left(exp: ExperimentContext, count: int) -> list[str]:
    """The parts of the prediction that have not ended for good (see _prediction_jobs), as K/N."""
    whole = exp.predict_layout()
    output = whole.output
    since = trained_ts(exp)
    left = []
    for part in (Part(k, count) for k in range(count)):
        layout = PipelineLayout(output, whole.supervisor_dir / part.name)
        written = mtime(layout.state_file)
        code = StateStore(layout.state_file).read().data.get("exit_code")
        if written is None or written < since or not isinstance(code, int) or code == ExitCode.STOPPED \
                or RunLock(layout.lock_file).is_held_elsewhere():
            left.append(str(part))
    return left


def wait_prediction(argv: list[str], poll_s: float = 30.0, sleep: Callable[[float], None] = time.sleep,
                    say: Callable[[str], None] = print) -> int:
    """`CONFIG find-best` (find_best's choice is there) or `CONFIG parts N` (every part of N ended): block until
    then, 0; 2 for arguments it does not know. An init container's command (WAIT_PREDICTION)."""
    if len(argv) < 2 or argv[1] not in ("find-best", "parts") or (argv[1] == "parts") != (len(argv) == 3) \
            or (len(argv) == 3 and not (argv[2].isdigit() and int(argv[2]) >= 1)):
        say(f"wait_prediction: got {argv}; give CONFIG find-best, or CONFIG parts N")
        return int(ExitCode.USAGE)
    exp = ExperimentContext.load(Path(argv[0]))
    said: object = None
    while True:
        if argv[1] == "find-best":
            left = [] if find_best_done(exp) else [f"{INFORMATION} in {exp.layout.root}, newer than every fold and "
                                                   "made over this experiment's models and folds"]
        else:
            left = parts_left(exp, int(argv[2]))
        if not left:
            say("find_best's choice is there" if argv[1] == "find-best" else
                f"every one of {argv[2]} part(s) of the prediction ended")
            return 0
        if left != said:
            said = left
            say(f"waiting for {', '.join(left)}" if argv[1] == "find-best" else
                f"waiting for {len(left)} of {argv[2]} part(s) of the prediction to end: part {', '.join(left)}")
        sleep(poll_s)


def _meta(exp: ExperimentContext, object_name: str, name: str) -> dict[str, Any]:
    meta: dict[str, Any] = {"name": object_name, "labels": {LABEL: name, "app.kubernetes.io/name": "nnunet-supervise"}}
    if exp.spec.kubernetes.namespace:
        meta["namespace"] = exp.spec.kubernetes.namespace
    return meta


def manifests(exp: ExperimentContext, finished: set[Cell] | None = None) -> dict[str, dict[str, Any]]:
    """File name -> manifest, in the order to apply them. Cells already finished are left out."""
    if not exp.spec.kubernetes.image:
        raise ConfigError(["kubernetes.image: required to render Jobs: the image that runs the folds (nnU-Net, torch "
                           "and nnunet-supervise installed; see the README's Dockerfile)"], str(exp.config_path))
    done = finished or set()
    name = dns_name(f"nnunet-{exp.config_path.stem}")[:40].rstrip("-")
    todo = [c for c in exp.cells if c not in done]
    exp.require_earlier_stages(todo)
    later = waiting_cells(exp, todo)
    first = [c for c in todo if c not in later]
    out: dict[str, dict[str, Any]] = {
        "10-configmap.yaml": {"apiVersion": "v1", "kind": "ConfigMap", "metadata": _meta(exp, f"{name}-experiment",
                                                                                          name),
                              "data": {"experiment.yaml": yaml.safe_dump(resolved_document(exp), sort_keys=False)}}}
    if first:
        out["20-cells-job.yaml"] = _cells_job(exp, name, "cells", first, None)
    if later:
        earlier = sorted({exp.waits_for[c.configuration] for c in later})
        out["30-cascade-job.yaml"] = _cells_job(exp, name, "cascade", later, earlier)
    if exp.spec.experiment.find_best:
        pod = _pod(exp, name, f"exec python -m supervisor find-best {CONFIG_DIR}/experiment.yaml", 0, [])
        out["40-find-best-job.yaml"] = {"apiVersion": "batch/v1", "kind": "Job",
                                        "metadata": _meta(exp, f"{name}-find-best", name),
                                        "spec": {"backoffLimit": 2, "template": pod}}
    n = prediction_parts(exp)
    if n is not None:
        out.update(_prediction_jobs(exp, name, n))
    return out


class _NoAliases(yaml.SafeDumper):
    """Write a list used twice (the pod's env, shared with its init container) out twice, not as &id001 / *id001."""

    def ignore_aliases(self, data: Any) -> bool:
        return True


def _dump(doc: dict[str, Any]) -> str:
    return yaml.dump(doc, Dumper=_NoAliases, sort_keys=False)


def render(docs: dict[str, dict[str, Any]]) -> str:
    """All manifests as one multi-document YAML stream."""
    return "".join(f"# {fname}\n---\n" + _dump(doc) for fname, doc in docs.items())


def write(docs: dict[str, dict[str, Any]], folder: Path) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    written = []
    for fname, doc in docs.items():
        (folder / fname).write_text(_dump(doc))
        written.append(folder / fname)
    return written
