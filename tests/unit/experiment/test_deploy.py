"""An experiment beyond one machine: the SLURM job chain and the Kubernetes Jobs, rendered by pure functions and
compared as text and YAML; the manifests validated against a current Kubernetes schema."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from supervisor.experiment import kubernetes as k8s
from supervisor.experiment import slurmchain
from supervisor.experiment.context import Cell, ExperimentContext
from supervisor.layout import PipelineLayout
from supervisor.rundir.lock import RunLock
from supervisor.rundir.statefile import StateStore
from tests.unit.experiment.conftest import experiment
from tests.unit.experiment.test_findbest import information


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
    assert cascade.after == (slurmchain.After("cells", lowres_tasks),) and lowres_tasks == (10, 11, 12, 13, 14)
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
    assert "predict" not in text and "PREDICT" not in text  # no predict section: the chain ends with find_best
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


# ---- SLURM: the prediction in parts, then its tail ----

def predicting(tmp_path: Path, predict: dict[str, Any] | None = None, **sections: Any) -> ExperimentContext:
    """full() with a predict section (its folders under nnUNet_results, as a pod would mount them)."""
    (tmp_path / "r" / "imagesTs").mkdir(parents=True, exist_ok=True)
    return full(tmp_path, predict={"input": "r/imagesTs", "output": "r/predictions", **(predict or {})}, **sections)


def test_a_predict_section_adds_the_parts_array_after_find_best_and_the_tail_after_every_part(
        tmp_path: Path) -> None:
    exp = predicting(tmp_path)
    jobs = slurmchain.chain(exp, [], OPTS)
    assert [j.key for j in jobs] == ["cells", "cascade", "find_best", "predict_parts", "predict"]
    best, parts, tail = jobs[2:]
    assert parts.spec.tasks == 4  # parts: auto, one per GPU of the 4 listed
    assert parts.after == (slurmchain.After("find_best"),)
    assert tail.after == (slurmchain.After("find_best"), slurmchain.After("predict_parts", None, "afterany"))
    ids = {"cells": "100", "cascade": "101", "find_best": "102", "predict_parts": "103"}
    assert slurmchain.dependency(best, ids) == "afterok:100:101"  # unchanged
    assert slurmchain.dependency(parts, ids) == "afterok:102"
    assert slurmchain.dependency(tail, ids) == "afterok:102,afterany:103"  # the whole array, however it ended
    script = slurmchain.slurm.render(parts.spec)
    lines = script.splitlines()
    for line in ("#SBATCH --array=0-3%4", "#SBATCH --requeue", "#SBATCH --signal=B:USR1@300", "#SBATCH --gres=gpu:1",
                 "#SBATCH --mem=64G", "#SBATCH --time=2-00:00:00",
                 f"#SBATCH --output={exp.layout.root / 'slurm'}/slurm-%x-%A_%a.out"):
        assert line in lines
    assert "CELLS=(" not in script and "--configuration" not in script
    assert lines[-1] == \
        f'exec /venv/bin/python -m supervisor predict {exp.config_path} --part "${{SLURM_ARRAY_TASK_ID}}/4"'
    tail_script = slurmchain.slurm.render(tail.spec)
    tail_lines = tail_script.splitlines()
    assert "#SBATCH --gres=gpu:1" in tail_lines and "#SBATCH --requeue" in tail_lines  # it predicts what a part left
    assert "--array" not in tail_script and "slurm-%x-%j.out" in tail_script
    # --no-parts: the array's tasks were the parts; the tail does not cut the input again on its one GPU
    assert tail_lines[-1] == f"exec /venv/bin/python -m supervisor predict {exp.config_path} --no-parts"
    for text in (script, tail_script):
        assert subprocess.run(["bash", "-n"], input=text, text=True).returncode == 0
    assert parts.what.startswith("the prediction in 4 part(s)") and tail.what.startswith("the prediction's tail")
    assert best.what == "nnUNetv2_find_best_configuration" and jobs[0].what.startswith("15 cell(s): 2d/fold_0")


def test_the_parts_array_task_predicts_its_own_part(tmp_path: Path) -> None:
    """The script run by bash as SLURM would, with `echo` for the interpreter: the task id becomes K of K/N."""
    exp = predicting(tmp_path)
    parts = slurmchain.chain(exp, [], slurmchain.Options("echo"))[-2]
    script = tmp_path / "parts.sbatch"
    script.write_text(slurmchain.slurm.render(parts.spec))
    r = subprocess.run(["bash", str(script)], capture_output=True, text=True, timeout=30,
                       env={"PATH": "/usr/bin:/bin", "SLURM_JOB_ID": "7", "SLURM_ARRAY_TASK_ID": "2"})
    assert r.returncode == 0, r.stderr
    assert r.stdout.splitlines()[-2:] == ["nnunet-supervise: array task 2 of 4",
                                          f"-m supervisor predict {exp.config_path} --part 2/4"]


@pytest.mark.parametrize(("sections", "count"), [
    ({"predict": {"parts": 3}}, 3),  # as many as asked, whatever the GPUs
    ({"nnunet": {"device": "cpu"}, "experiment": {"devices": {"slots": 2}}}, 2),  # auto on the CPU: one per slot
    ({"experiment": {"devices": {"gpus": "auto"}}}, 1),  # GPUs found at run time: one
])
def test_the_number_of_parts_is_predict_parts_or_one_per_device(tmp_path: Path, sections: dict[str, Any],
                                                                count: int) -> None:
    (tmp_path / "r" / "imagesTs").mkdir(parents=True)
    given = {"nnunet": {"device": "cuda"}, "experiment": {"devices": {"gpus": [0, 1, 2, 3]}}, **sections}
    given["predict"] = {"input": "r/imagesTs", "output": "r/predictions", **sections.get("predict", {})}
    exp = ExperimentContext.load(experiment(tmp_path, **given))
    parts = next(j for j in slurmchain.chain(exp, [], OPTS) if j.key == "predict_parts")
    assert parts.spec.tasks == count == slurmchain.prediction_parts(exp) == k8s.prediction_parts(exp)
    script = slurmchain.slurm.render(parts.spec)
    assert f"#SBATCH --array=0-{count - 1}%4" in script and f'--part "${{SLURM_ARRAY_TASK_ID}}/{count}"' in script


def test_the_submitter_and_submit_wait_for_find_best_then_for_every_part(tmp_path: Path) -> None:
    jobs = slurmchain.chain(predicting(tmp_path), [], OPTS)
    text = slurmchain.submitter(jobs)
    assert "PREDICT_PARTS=$(sbatch --parsable --dependency=afterok:${FIND_BEST} <<'NNUNET_SUPERVISE_SBATCH'" in text
    assert ("PREDICT=$(sbatch --parsable --dependency=afterok:${FIND_BEST},afterany:${PREDICT_PARTS} "
            "<<'NNUNET_SUPERVISE_SBATCH'") in text
    assert 'echo "${PREDICT}"' in text
    assert subprocess.run(["bash", "-n"], input=text, text=True).returncode == 0
    calls: list[list[str]] = []

    def sbatch(argv: list[str]) -> subprocess.CompletedProcess[str]:
        calls.append(argv)
        return subprocess.CompletedProcess(argv, 0, f"{200 + len(calls)}\n", "")

    assert slurmchain.submit(jobs, tmp_path / "slurm", sbatch) == ["201", "202", "203", "204", "205"]
    assert calls[2][2] == "--dependency=afterok:201:202"
    assert calls[3][2] == "--dependency=afterok:203"
    assert calls[4][2] == "--dependency=afterok:203,afterany:204"
    assert [Path(c[-1]).name for c in calls[3:]] == ["nnunet-Dataset977_Thing-exp-predict-parts.sbatch",
                                                     "nnunet-Dataset977_Thing-exp-predict.sbatch"]


def test_with_every_cell_finished_the_chain_is_find_best_and_the_prediction(tmp_path: Path) -> None:
    exp = predicting(tmp_path)
    jobs = slurmchain.chain(exp, exp.cells, OPTS)
    assert [j.key for j in jobs] == ["find_best", "predict_parts", "predict"]
    assert jobs[0].after == () and slurmchain.dependency(jobs[0], {}) is None
    calls: list[list[str]] = []

    def sbatch(argv: list[str]) -> subprocess.CompletedProcess[str]:
        calls.append(argv)
        return subprocess.CompletedProcess(argv, 0, f"{300 + len(calls)};cluster\n", "")

    assert slurmchain.submit(jobs, tmp_path / "slurm", sbatch) == ["301", "302", "303"]
    assert calls[0][:2] == ["sbatch", "--parsable"] and not calls[0][2].startswith("--dependency")
    assert calls[1][2] == "--dependency=afterok:301" and calls[2][2] == "--dependency=afterok:301,afterany:302"
    text = slurmchain.submitter(jobs)
    assert "FIND_BEST=$(sbatch --parsable <<" in text
    assert subprocess.run(["bash", "-n"], input=text, text=True).returncode == 0


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
    # the stop grace, a cooperative save at the next step (120 s), 60 s for the tree
    assert pod["restartPolicy"] == "Never" and pod["terminationGracePeriodSeconds"] == 30 + 120 + 60
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



# ---- Kubernetes: the prediction in parts, then its tail ----

def rendered_predicting(tmp_path: Path, predict: dict[str, Any] | None = None) -> dict[str, dict[str, Any]]:
    section = {"image": "registry.example.org/lab/nnunet:2.8", "namespace": "imaging", "cpu": "8",
               "memory": "48Gi", "volumes": {"nnUNet_preprocessed": {"pvc": "data"},
                                             "nnUNet_results": {"pvc": "results"}}}
    return k8s.manifests(predicting(tmp_path, predict, kubernetes=section, cooperative={"enabled": True}))


def test_a_predict_section_adds_an_indexed_job_of_parts_and_a_job_for_the_tail(tmp_path: Path) -> None:
    docs = rendered_predicting(tmp_path)
    assert list(docs) == ["10-configmap.yaml", "20-cells-job.yaml", "30-cascade-job.yaml", "40-find-best-job.yaml",
                          "50-predict-parts-job.yaml", "60-predict-job.yaml"]
    parts = docs["50-predict-parts-job.yaml"]
    assert parts["metadata"]["name"] == "nnunet-exp-predict-parts" and parts["metadata"]["namespace"] == "imaging"
    job = parts["spec"]
    assert job["completionMode"] == "Indexed" and job["completions"] == job["parallelism"] == 4
    assert job["podReplacementPolicy"] == "Failed" and job["backoffLimitPerIndex"] == 10
    cells_rules = docs["30-cascade-job.yaml"]["spec"]["podFailurePolicy"]["rules"]
    rules = job["podFailurePolicy"]["rules"]  # the cells' retry rules, for the prediction's container
    assert json.dumps(rules) == json.dumps(cells_rules).replace('"fold"', '"predict"')
    pod = job["template"]["spec"]
    container = pod["containers"][0]
    assert container["name"] == "predict" and container["resources"]["limits"] == {"nvidia.com/gpu": 1}
    assert container["command"][2].endswith('exec python -m supervisor predict /etc/nnunet-supervise/experiment.yaml '
                                            '--part "${JOB_COMPLETION_INDEX}/4"')
    assert [c["name"] for c in pod["initContainers"]] == ["wait", "wait-find-best"]
    assert pod["initContainers"][0]["command"] == ["python", "-m", "supervisor", "wait",
                                                   "/etc/nnunet-supervise/experiment.yaml"]  # every fold
    assert pod["initContainers"][1]["command"] == ["python", "-c", k8s.WAIT_PREDICTION,
                                                   "/etc/nnunet-supervise/experiment.yaml", "find-best"]
    tail = docs["60-predict-job.yaml"]["spec"]
    assert "completionMode" not in tail and tail["backoffLimit"] == 2 and tail["podReplacementPolicy"] == "Failed"
    tail_rules = tail["podFailurePolicy"]["rules"]
    assert {"action": "Ignore", "onExitCodes": {"containerName": "predict", "operator": "In", "values": [75]}} \
        in tail_rules
    assert {"action": "FailJob", "onExitCodes": {"containerName": "predict", "operator": "In", "values": [1, 2]}} \
        in tail_rules  # 3: a part still holds its cases, counted and retried
    assert {"action": "FailJob", "onExitCodes": {"containerName": "wait", "operator": "In", "values": [1]}} \
        in tail_rules
    tail_pod = tail["template"]["spec"]
    assert tail_pod["containers"][0]["command"] == ["bash", "-c", "exec python -m supervisor predict "
                                                                  "/etc/nnunet-supervise/experiment.yaml --no-parts"]
    assert tail_pod["containers"][0]["resources"]["limits"] == {"nvidia.com/gpu": 1}  # it predicts what a part left
    assert [c["name"] for c in tail_pod["initContainers"]] == ["wait", "wait-find-best", "wait-parts"]
    assert tail_pod["initContainers"][2]["command"][-2:] == ["parts", "4"]
    config = yaml.safe_load(docs["10-configmap.yaml"]["data"]["experiment.yaml"])
    assert config["predict"]["input"] == str(tmp_path / "r" / "imagesTs")  # absolute: the pod reads /etc/...
    assert config["predict"]["output"] == str(tmp_path / "r" / "predictions")


def test_without_a_predict_section_there_are_no_prediction_jobs(tmp_path: Path) -> None:
    docs = rendered(tmp_path)
    assert not any("predict" in name for name in docs)
    assert k8s.prediction_parts(full(tmp_path)) is None and slurmchain.prediction_parts(full(tmp_path)) is None


def test_predict_parts_sets_the_indexes(tmp_path: Path) -> None:
    docs = rendered_predicting(tmp_path, {"parts": 3})
    job = docs["50-predict-parts-job.yaml"]["spec"]
    assert job["completions"] == job["parallelism"] == 3
    assert job["template"]["spec"]["containers"][0]["command"][2].endswith('--part "${JOB_COMPLETION_INDEX}/3"')
    assert docs["60-predict-job.yaml"]["spec"]["template"]["spec"]["initContainers"][2]["command"][-2:] == \
        ["parts", "3"]


def test_the_part_pod_predicts_the_part_of_its_index(tmp_path: Path) -> None:
    """The container's command run by bash as the kubelet would, with a `python` that prints its arguments."""
    docs = rendered_predicting(tmp_path)
    fake = tmp_path / "bin"
    fake.mkdir()
    (fake / "python").write_text('#!/bin/sh\necho "$@"\n')
    (fake / "python").chmod(0o755)
    command = docs["50-predict-parts-job.yaml"]["spec"]["template"]["spec"]["containers"][0]["command"]
    r = subprocess.run(command, capture_output=True, text=True, timeout=30,
                       env={"PATH": f"{fake}:/usr/bin:/bin", "JOB_COMPLETION_INDEX": "3"})
    assert r.returncode == 0, r.stderr
    assert r.stdout.splitlines() == ["nnunet-supervise: index 3: prediction part 3/4",
                                     "-m supervisor predict /etc/nnunet-supervise/experiment.yaml --part 3/4"]


def test_a_prediction_folder_no_volume_mounts_is_refused(tmp_path: Path) -> None:
    from supervisor.errors import ConfigError

    (tmp_path / "elsewhere").mkdir()
    with pytest.raises(ConfigError, match=r"predict\.input: .*elsewhere is inside none of the folders"):
        rendered_predicting(tmp_path, {"input": "elsewhere"})


def test_every_prediction_manifest_is_valid_against_a_current_kubernetes_schema(tmp_path: Path) -> None:
    kubernetes_validate = pytest.importorskip("kubernetes_validate")
    version = kubernetes_validate.latest_version()
    for doc in rendered_predicting(tmp_path).values():
        kubernetes_validate.validate(json.loads(json.dumps(doc)), version, strict=True)
    assert "&id" not in k8s.render(rendered_predicting(tmp_path))


# ---- inside the pods: the prediction's waits ----

def trained(tmp_path: Path, parts: int = 2) -> ExperimentContext:
    """2d x 2 folds on the CPU, both finished (their summaries dated 1000), and a predict section in parts."""
    (tmp_path / "r" / "imagesTs").mkdir(parents=True, exist_ok=True)
    exp = ExperimentContext.load(experiment(tmp_path, experiment={"configurations": ["2d"], "folds": [0, 1]},
                                            predict={"input": "r/imagesTs", "output": "r/pred", "parts": parts}))
    for cell in exp.cells:
        fold = exp.fold_layout(cell).fold_dir
        (fold / "validation").mkdir(parents=True)
        (fold / "checkpoint_final.pth").write_bytes(b"x")
        (fold / "validation" / "summary.json").write_text("{}")
        os.utime(fold / "validation" / "summary.json", (1000, 1000))
    return exp


def chose(exp: ExperimentContext, ts: float) -> None:
    exp.layout.root.mkdir(parents=True, exist_ok=True)
    (exp.layout.root / "inference_information.json").write_text(json.dumps(information(exp)))
    os.utime(exp.layout.root / "inference_information.json", (ts, ts))


def part_ended(exp: ExperimentContext, k: int, n: int, code: int | None, ts: float = 2000) -> PipelineLayout:
    whole = exp.predict_layout()
    layout = PipelineLayout(whole.output, whole.supervisor_dir / f"part-{k}-of-{n}")
    layout.supervisor_dir.mkdir(parents=True, exist_ok=True)
    StateStore(layout.state_file).save({"state": "running" if code is None else "x", "exit_code": code})
    os.utime(layout.state_file, (ts, ts))
    return layout


def test_a_part_has_ended_once_it_exited_other_than_stopped_and_no_supervisor_holds_it(tmp_path: Path) -> None:
    exp = trained(tmp_path, parts=3)
    assert k8s.parts_left(exp, 3) == ["0/3", "1/3", "2/3"]  # none started
    part_ended(exp, 0, 3, 0)
    part_ended(exp, 1, 3, 1)  # a poison case set aside: the tail goes on with the rest
    part_ended(exp, 2, 3, 75)  # stopped resumably: its index runs again
    assert k8s.parts_left(exp, 3) == ["2/3"]
    part_ended(exp, 2, 3, None)  # killed outright: "running", its index runs again
    assert k8s.parts_left(exp, 3) == ["2/3"]
    layout = part_ended(exp, 2, 3, 70)
    lock = RunLock(layout.lock_file)
    lock.acquire()  # its supervisor still alive
    try:
        assert k8s.parts_left(exp, 3) == ["2/3"]
    finally:
        lock.release()
    assert k8s.parts_left(exp, 3) == []  # a crash the tail picks up
    part_ended(exp, 0, 3, 0, ts=900)  # left by a prediction before these folds finished
    assert k8s.parts_left(exp, 3) == ["0/3"]


def test_the_init_containers_wait_ends_when_what_it_waits_for_is_there(tmp_path: Path) -> None:
    exp = trained(tmp_path)
    said: list[str] = []
    sleeps: list[float] = []

    def sleep(s: float) -> None:
        sleeps.append(s)
        if len(sleeps) == 2:
            chose(exp, 1500)
            part_ended(exp, 0, 2, 0)
        if len(sleeps) == 3:
            part_ended(exp, 1, 2, 1)

    config = str(exp.config_path)
    assert k8s.wait_prediction([config, "find-best"], 5, sleep, said.append) == 0
    assert k8s.wait_prediction([config, "parts", "2"], 5, sleep, said.append) == 0
    assert sleeps == [5, 5, 5]
    assert said[0].startswith("waiting for inference_information.json") and said[1] == "find_best's choice is there"
    assert said[2:] == ["waiting for 1 of 2 part(s) of the prediction to end: part 1/2",
                        "every one of 2 part(s) of the prediction ended"]
    for bad in ([config], [config, "parts"], [config, "find-best", "2"], [config, "parts", "x"],
                [config, "parts", "0"], [config, "x"]):
        assert k8s.wait_prediction(bad, 5, sleep, said.append) == 2


def test_the_init_containers_command_runs(tmp_path: Path) -> None:
    """WAIT_PREDICTION as the pod runs it (python -c), here with every part ended: exit 0 at once."""
    exp = trained(tmp_path)
    chose(exp, 1500)
    for k in range(2):
        part_ended(exp, k, 2, 0)
    for what in (["find-best"], ["parts", "2"]):
        r = subprocess.run([sys.executable, "-c", k8s.WAIT_PREDICTION, str(exp.config_path), *what],
                           capture_output=True, text=True, timeout=120, cwd=Path(__file__).resolve().parents[3])
        assert r.returncode == 0, r.stderr
        assert "ended" in r.stdout or "there" in r.stdout
