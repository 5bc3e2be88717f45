"""An experiment beyond one machine: the SLURM job chain and the Kubernetes Jobs, rendered by pure functions and
compared as text and YAML; the manifests validated against a current Kubernetes schema."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from supervisor.experiment import kubernetes as k8s
from supervisor.experiment import slurmchain
from supervisor.experiment.context import Cell, ExperimentContext
from tests.unit.experiment.conftest import experiment


def full(tmp_path: Path, **sections: Any) -> ExperimentContext:
    """2d, 3d_fullres, 3d_lowres and the cascade, 5 folds each, on 4 listed GPUs."""
    path = experiment(tmp_path, nnunet={"device": "cuda"},
                      experiment={"devices": {"gpus": [0, 1, 2, 3], "per_gpu": 1}}, **sections)
    return ExperimentContext.load(path)


OPTS = slurmchain.Options("/venv/bin/python", time="2-00:00:00", gres="gpu:1", cpus=8, mem="64G", max_parallel=4)


def test_the_chain_is_an_array_of_what_can_start_the_cascade_after_every_lowres_task_and_find_best_last(
        tmp_path: Path) -> None:
    exp = full(tmp_path)
    jobs = slurmchain.chain(exp, [], OPTS)
    assert [j.key for j in jobs] == ["cells", "cascade", "find_best"]
    cells, cascade, best = jobs
    assert len(cells.spec.cells) == 15 and len(cascade.spec.cells) == 5
    lowres_tasks = tuple(i for i, (c, _) in enumerate(cells.spec.cells) if c == "3d_lowres")
    assert cascade.after == (("cells", lowres_tasks),) and lowres_tasks == (10, 11, 12, 13, 14)
    assert slurmchain.dependency(cascade, {"cells": "100"}) == "afterok:100_10:100_11:100_12:100_13:100_14"
    assert slurmchain.dependency(best, {"cells": "100", "cascade": "101"}) == "afterok:100:101"
    script = slurmchain.slurm.render(cells.spec)
    assert "#SBATCH --array=0-14%4" in script and "#SBATCH --requeue" in script
    assert "#SBATCH --signal=B:USR1@300" in script and "#SBATCH --mem=64G" in script
    assert "  '3d_lowres 0'  # task 10" in script  # the cell table, readable
    assert 'read -r CONFIGURATION FOLD <<< "${CELLS[$SLURM_ARRAY_TASK_ID]}"' in script
    assert script.rstrip().endswith('run ' + str(exp.config_path) + ' --configuration "${CONFIGURATION}" '
                                    '--fold "${FOLD}"')
    best_script = slurmchain.slurm.render(best.spec)
    assert f"-m supervisor find-best {exp.config_path}" in best_script and "--gres" not in best_script


def test_finished_cells_are_left_out_and_a_finished_lowres_stage_releases_the_cascade(tmp_path: Path) -> None:
    exp = full(tmp_path)
    lowres = {c for c in exp.cells if c.configuration == "3d_lowres"}
    jobs = slurmchain.chain(exp, {Cell("2d", 0), *lowres}, OPTS)
    cells, cascade, _ = jobs
    assert ("2d", "0") not in cells.spec.cells and len(cells.spec.cells) == 9
    assert cascade.after == ()  # nothing left to wait for


def test_the_submitter_script_chains_the_dependencies(tmp_path: Path) -> None:
    text = slurmchain.submitter(slurmchain.chain(full(tmp_path), [], OPTS))
    assert "CELLS=$(sbatch --parsable <<'NNUNET_SUPERVISE_SBATCH'" in text
    assert "CASCADE=$(sbatch --parsable --dependency=afterok:${CELLS}_10:${CELLS}_11" in text
    assert "FIND_BEST=$(sbatch --parsable --dependency=afterok:${CELLS}:${CASCADE} <<" in text
    assert subprocess.run(["bash", "-n"], input=text, text=True).returncode == 0  # valid bash


def test_submit_passes_each_dependency_and_returns_the_ids(tmp_path: Path) -> None:
    calls: list[list[str]] = []

    def sbatch(argv: list[str]) -> subprocess.CompletedProcess[str]:
        calls.append(argv)
        return subprocess.CompletedProcess(argv, 0, f"{200 + len(calls)};cluster\n", "")

    ids = slurmchain.submit(slurmchain.chain(full(tmp_path), [], OPTS), tmp_path / "slurm", sbatch)
    assert ids == ["201", "202", "203"]
    assert calls[1][2] == "--dependency=afterok:201_10:201_11:201_12:201_13:201_14"
    assert calls[2][2] == "--dependency=afterok:201:202"
    assert all(Path(c[-1]).is_file() for c in calls)


# ---- Kubernetes ----

def rendered(tmp_path: Path, **k8s_section: Any) -> dict[str, dict[str, Any]]:
    section = {"image": "registry.example.org/lab/nnunet:2.8", "namespace": "imaging", "cpu": "8",
               "memory": "48Gi", "volumes": {"nnUNet_preprocessed": {"pvc": "data"},
                                             "nnUNet_results": {"pvc": "results"}}, **k8s_section}
    return k8s.manifests(full(tmp_path, kubernetes=section, cooperative={"enabled": True}))


def test_the_indexed_job_maps_our_exit_codes_to_the_engines_retry_rules(tmp_path: Path) -> None:
    docs = rendered(tmp_path)
    assert list(docs) == ["10-configmap.yaml", "20-cells-job.yaml", "30-cascade-job.yaml", "40-find-best-job.yaml"]
    job = docs["20-cells-job.yaml"]["spec"]
    assert job["completionMode"] == "Indexed" and job["completions"] == 15 and job["parallelism"] == 4
    assert job["podReplacementPolicy"] == "Failed" and job["backoffLimitPerIndex"] == 10
    rules = job["podFailurePolicy"]["rules"]
    assert rules[0] == {"action": "Ignore", "onPodConditions": [{"type": "DisruptionTarget"}]}
    assert rules[1]["action"] == "Ignore" and rules[1]["onExitCodes"]["values"] == [75]
    assert rules[2]["action"] == "FailIndex" and rules[2]["onExitCodes"]["values"] == [1, 2, 3]
    pod = job["template"]["spec"]
    assert pod["restartPolicy"] == "Never" and pod["terminationGracePeriodSeconds"] == 30 + 900 + 60
    fold = pod["containers"][0]
    assert fold["resources"] == {"requests": {"cpu": "8", "memory": "48Gi"}, "limits": {"nvidia.com/gpu": 1}}
    command = fold["command"][2]
    assert "CELLS=('2d 0' '2d 1'" in command and '"${CELLS[$JOB_COMPLETION_INDEX]}"' in command
    shm = next(v for v in pod["volumes"] if v["name"] == "dshm")
    assert shm["emptyDir"] == {"medium": "Memory", "sizeLimit": "16Gi"}
    mounts = {m["name"]: m["mountPath"] for m in fold["volumeMounts"]}
    assert mounts["nnunet-results"] == str(tmp_path / "r")  # the file's own paths: it works unchanged in the pod


def test_the_cascade_and_find_best_wait_for_what_they_need(tmp_path: Path) -> None:
    docs = rendered(tmp_path)
    cascade = docs["30-cascade-job.yaml"]["spec"]["template"]["spec"]
    assert cascade["initContainers"][0]["command"][-2:] == ["--configuration", "3d_lowres"]
    # a lowres fold that gave up fails the waiting index at once (`wait` exits 1), not after its retries
    rules = docs["30-cascade-job.yaml"]["spec"]["podFailurePolicy"]["rules"]
    assert {"action": "FailIndex", "onExitCodes": {"containerName": "wait", "operator": "In", "values": [1]}} in rules
    best = docs["40-find-best-job.yaml"]["spec"]["template"]["spec"]
    assert best["initContainers"][0]["command"][:4] == ["python", "-m", "supervisor", "wait"]
    assert "resources" not in best["containers"][0] or "limits" not in best["containers"][0]["resources"]
    config = yaml.safe_load(docs["10-configmap.yaml"]["data"]["experiment.yaml"])
    assert config["paths"]["nnUNet_results"] == str(tmp_path / "r") and "kubernetes" not in config


def test_a_cascade_without_its_lowres_stage_is_refused_on_both_engines(tmp_path: Path) -> None:
    from supervisor.errors import ConfigError

    exp = ExperimentContext.load(experiment(
        tmp_path, nnunet={"device": "cuda"}, experiment={"configurations": ["3d_cascade_fullres"]},
        kubernetes={"image": "registry.example.org/lab/nnunet:2.8"}))
    for render in (lambda: slurmchain.chain(exp, [], OPTS), lambda: k8s.manifests(exp)):
        with pytest.raises(ConfigError, match="needs every fold of 3d_lowres finished"):
            render()


def test_the_rendered_yaml_has_no_anchors(tmp_path: Path) -> None:
    text = k8s.render(rendered(tmp_path))  # the pod's env is shared with its init container: written out twice
    assert "&id" not in text and "*id" not in text


def test_without_an_image_there_is_nothing_to_render(tmp_path: Path) -> None:
    from supervisor.errors import ConfigError

    with pytest.raises(ConfigError, match=r"kubernetes\.image: required"):
        k8s.manifests(full(tmp_path))


def test_every_manifest_is_valid_against_a_current_kubernetes_schema(tmp_path: Path) -> None:
    kubernetes_validate = pytest.importorskip("kubernetes_validate")
    version = kubernetes_validate.latest_version()
    for doc in rendered(tmp_path).values():
        kubernetes_validate.validate(json.loads(json.dumps(doc)), version, strict=True)  # raises naming the field


def test_kubectl_builds_the_manifests_without_a_server(tmp_path: Path) -> None:
    if shutil.which("kubectl") is None:
        pytest.skip("kubectl is not installed")
    out = tmp_path / "manifests"
    k8s.write(rendered(tmp_path), out)
    (out / "kustomization.yaml").write_text(yaml.safe_dump({"resources": sorted(p.name for p in out.glob("*.yaml")
                                                                                if p.name != "kustomization.yaml")}))
    r = subprocess.run(["kubectl", "kustomize", str(out)], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    kinds = [d["kind"] for d in yaml.safe_load_all(r.stdout)]
    assert sorted(kinds) == ["ConfigMap", "Job", "Job", "Job"]

