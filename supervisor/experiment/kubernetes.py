"""An experiment as Kubernetes Jobs, rendered by pure functions: a ConfigMap with the experiment file, an Indexed
Job over the cells (index -> cell through a table in the pod's command), one for the cascade's cells and one for
find_best_configuration, each waiting (an init container) until what it needs has finished.

Our exit codes are the engine's retry rules (`podFailurePolicy`): 75 (stopped resumably) and a disruption
(preemption, a node drained) are not failures, the index is simply run again; 1, 2, 3 (gave up, bad config,
locked) fail that index at once; anything else (70, a killed pod) counts against `backoffLimitPerIndex`.
`podReplacementPolicy: Failed` keeps two pods of one index from ever training one fold at once.
"""

from __future__ import annotations

import re
import shlex
from pathlib import Path
from typing import Any

import yaml

from supervisor.errors import ConfigError, ExitCode
from supervisor.experiment.context import Cell, ExperimentContext

CONFIG_DIR = "/etc/nnunet-supervise"
CONTAINER = "fold"
WAIT_CONTAINER = "wait"
LABEL = "nnunet-supervise/experiment"


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
    """Room for SIGTERM to become a cooperative save at the epoch end, then the tree's stop."""
    coop = exp.spec.cooperative
    save = (float(coop.stop_timeout_s) if coop.stop_timeout_s != "auto" else 900.0) if coop.enabled else 0.0
    return int(exp.spec.process.stop_grace_s + save + 60)


def _pod(exp: ExperimentContext, name: str, command: str, gpus: int, wait_for: list[str] | None) -> dict[str, Any]:
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
    container = {"name": CONTAINER, "image": k8s.image, "command": ["bash", "-c", command], "env": env,
                 "volumeMounts": mounts, **({"resources": resources} if resources else {})}
    spec: dict[str, Any] = {"restartPolicy": "Never", "terminationGracePeriodSeconds": grace_s(exp),
                            "containers": [container], "volumes": volumes}
    if wait_for is not None:
        # start only once what this Job needs has finished. The scheduler counts the pod's GPU from the moment it is
        # placed, so a waiting cascade pod holds a GPU: apply 30-cascade-job.yaml later where GPUs are few (README)
        spec["initContainers"] = [{
            "name": WAIT_CONTAINER, "image": k8s.image, "env": env, "volumeMounts": mounts,
            "command": ["python", "-m", "supervisor", "wait", f"{CONFIG_DIR}/experiment.yaml",
                        *[a for c in wait_for for a in ("--configuration", c)]]}]
    return {"metadata": {"labels": {LABEL: name}}, "spec": spec}


def _cells_job(exp: ExperimentContext, name: str, key: str, cells: list[Cell],
               wait_for: list[str] | None) -> dict[str, Any]:
    table = " ".join(shlex.quote(f"{c.configuration} {c.fold}") for c in cells)
    command = "\n".join([
        "set -euo pipefail",
        f"CELLS=({table})  # index -> (configuration, fold)",
        'read -r CONFIGURATION FOLD <<< "${CELLS[$JOB_COMPLETION_INDEX]}"',
        'echo "nnunet-supervise: index ${JOB_COMPLETION_INDEX}: ${CONFIGURATION} fold ${FOLD}"',
        f'exec python -m supervisor run {CONFIG_DIR}/experiment.yaml --configuration "${{CONFIGURATION}}" '
        '--fold "${FOLD}"'])
    gpus = exp.spec.nnunet.num_gpus if exp.spec.nnunet.device == "cuda" else 0
    return {
        "apiVersion": "batch/v1", "kind": "Job",
        "metadata": _meta(exp, f"{name}-{key}", name),
        "spec": {
            "completionMode": "Indexed", "completions": len(cells), "parallelism": parallelism(exp, len(cells)),
            "backoffLimitPerIndex": exp.spec.restart.max_restarts,
            "podReplacementPolicy": "Failed",
            "podFailurePolicy": {"rules": [
                {"action": "Ignore", "onPodConditions": [{"type": "DisruptionTarget"}]},
                {"action": "Ignore", "onExitCodes": {"containerName": CONTAINER, "operator": "In",
                                                     "values": [int(ExitCode.STOPPED)]}},
                {"action": "FailIndex", "onExitCodes": {"containerName": CONTAINER, "operator": "In",
                                                        "values": [int(ExitCode.GAVE_UP), int(ExitCode.USAGE),
                                                                   int(ExitCode.LOCKED)]}},
                *([{"action": "FailIndex", "onExitCodes": {"containerName": WAIT_CONTAINER, "operator": "In",
                                                           "values": [int(ExitCode.GAVE_UP)]}}]
                  if wait_for is not None else []),  # the stage it waits for gave up: retrying cannot help
            ]},
            "template": _pod(exp, name, command, gpus, wait_for)}}


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
    later = [c for c in todo if exp.waits_for.get(c.configuration) in exp.configurations]
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
