"""A study: an experiment of several trainers and/or plans (experiment.trainers, experiment.plans). Its cells are
trainer x plans x configuration x fold, each a fold of its own trainer and plans; find_best runs once over all;
the SLURM and Kubernetes tables name each cell's trainer and plans; status groups by them."""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

import pytest

from supervisor.context import RunContext
from supervisor.deploy import slurm
from supervisor.errors import ConfigError
from supervisor.experiment import findbest, slurmchain, view
from supervisor.experiment import kubernetes as k8s
from supervisor.experiment.context import Cell, ExperimentContext
from supervisor.experiment.schedule import Begin, CellState, Device, FoldEnded, Scheduler, Start, State
from tests.unit.experiment.conftest import experiment, two_plans

TRAINERS = ["nnUNetTrainer", "nnUNetTrainer_Short"]
OPTS = slurmchain.Options("/venv/bin/python", time="2-00:00:00", gres="gpu:1")


def study(tmp_path: Path, **sections: Any) -> ExperimentContext:
    """Two trainers x one plans x two configurations x two folds."""
    ex = {"trainers": TRAINERS, "configurations": ["2d", "3d_fullres"], "folds": [0, 1], **sections.pop("x", {})}
    return ExperimentContext.load(experiment(tmp_path, experiment=ex, **sections))


def test_the_cells_are_trainer_x_plans_x_configuration_x_fold_each_in_its_own_fold_folder(tmp_path: Path) -> None:
    exp = study(tmp_path)
    assert exp.is_study and [(s.trainer, s.plans) for s in exp.studies] == [(t, "nnUNetPlans") for t in TRAINERS]
    assert [c.name for c in exp.cells] == [
        "nnUNetTrainer__nnUNetPlans/2d/fold_0", "nnUNetTrainer__nnUNetPlans/2d/fold_1",
        "nnUNetTrainer__nnUNetPlans/3d_fullres/fold_0", "nnUNetTrainer__nnUNetPlans/3d_fullres/fold_1",
        "nnUNetTrainer_Short__nnUNetPlans/2d/fold_0", "nnUNetTrainer_Short__nnUNetPlans/2d/fold_1",
        "nnUNetTrainer_Short__nnUNetPlans/3d_fullres/fold_0", "nnUNetTrainer_Short__nnUNetPlans/3d_fullres/fold_1"]
    results = tmp_path / "r" / "Dataset977_Thing"
    assert [exp.fold_layout(c).fold_dir for c in exp.cells[4:6]] == [
        results / "nnUNetTrainer_Short__nnUNetPlans__2d" / "fold_0",
        results / "nnUNetTrainer_Short__nnUNetPlans__2d" / "fold_1"]
    assert exp.fold_layout(exp.cells[0]).fold_dir == results / "nnUNetTrainer__nnUNetPlans__2d" / "fold_0"
    run = exp.run(exp.cells[6])
    assert (run.config.nnunet.trainer, run.config.nnunet.plans) == ("nnUNetTrainer_Short", "nnUNetPlans")
    assert run.layout.fold_dir == results / "nnUNetTrainer_Short__nnUNetPlans__3d_fullres" / "fold_0"
    assert exp.layout.fold_log(exp.cells[6]).name == "nnUNetTrainer_Short__nnUNetPlans__3d_fullres__fold_0.log"
    assert exp.cells[6].fields() == {"trainer": "nnUNetTrainer_Short", "plans": "nnUNetPlans",
                                     "configuration": "3d_fullres", "fold": 0}


def test_a_one_item_list_is_the_single_trainer_experiment_exactly(tmp_path: Path) -> None:
    exp = ExperimentContext.load(experiment(tmp_path, experiment={"trainers": ["nnUNetTrainer"], "folds": [0]}))
    assert not exp.is_study and [c.name for c in exp.cells] == ["2d/fold_0", "3d_fullres/fold_0", "3d_lowres/fold_0",
                                                           "3d_cascade_fullres/fold_0"]
    assert exp.cells[0] == Cell("2d", 0) and exp.layout.fold_log(exp.cells[0]).name == "2d__fold_0.log"


def test_the_run_of_one_cell_names_its_trainer_and_plans(tmp_path: Path) -> None:
    exp = study(tmp_path)
    ctx = RunContext.load(exp.config_path, "1", "2d", trainer="nnUNetTrainer_Short")  # one plans: it may be left out
    assert ctx.config.nnunet.trainer == "nnUNetTrainer_Short" and ctx.config.nnunet.fold == 1
    assert ctx.layout.fold_dir == exp.fold_layout(exp.cells[5]).fold_dir
    with pytest.raises(ConfigError, match="--trainer: this experiment has several"):
        RunContext.load(exp.config_path, "1", "2d")
    with pytest.raises(ConfigError, match="--trainer: nnUNetTrainerX is not of this experiment"):
        RunContext.load(exp.config_path, "1", "2d", trainer="nnUNetTrainerX")
    with pytest.raises(ConfigError, match="--plans: nnUNetResEncUNetMPlans is not of this experiment"):
        RunContext.load(exp.config_path, "1", "2d", trainer="nnUNetTrainer", plans="nnUNetResEncUNetMPlans")


def test_the_fold_supervisor_is_started_with_its_trainer_and_plans(tmp_path: Path) -> None:
    from supervisor.experiment import supervise

    exp = study(tmp_path)
    seen: list[list[str]] = []

    class Stop(Exception):
        pass

    def spawn(argv: list[str], env: dict[str, str], log: Path) -> Any:
        seen.append(argv)
        raise Stop

    sup = supervise.ExperimentSupervisor.__new__(supervise.ExperimentSupervisor)
    sup.exp, sup.spawn, sup.layout = exp, spawn, exp.layout
    with pytest.raises(Stop):
        sup._start(exp.cells[5], "0")
    assert seen[0][-8:] == ["--configuration", "2d", "--fold", "1", "--trainer", "nnUNetTrainer_Short",
                            "--plans", "nnUNetPlans"]


def test_find_best_runs_once_over_every_trainer_and_plans(tmp_path: Path) -> None:
    exp = study(tmp_path)
    argv = findbest.find_best_argv(exp, exp.configurations)
    assert argv is not None and argv[1:] == ["Dataset977_Thing", "-c", "2d", "3d_fullres", "-tr", *TRAINERS,
                                             "-p", "nnUNetPlans", "-f", "0", "1"]


def test_the_slurm_cells_table_names_each_cells_trainer_and_plans(tmp_path: Path) -> None:
    exp = study(tmp_path)
    jobs = slurmchain.chain(exp, [], OPTS)
    assert [j.key for j in jobs] == ["cells", "find_best"]
    cells = jobs[0]
    assert cells.spec.cells[5] == ("2d", "1", "nnUNetTrainer_Short", "nnUNetPlans")
    script = slurm.render(cells.spec)
    assert "#SBATCH --array=0-7" in script
    assert "  '2d 1 nnUNetTrainer_Short nnUNetPlans'  # task 5" in script
    assert 'read -r CONFIGURATION FOLD TRAINER PLANS <<< "${CELLS[$SLURM_ARRAY_TASK_ID]}"' in script
    assert script.rstrip().endswith(f'run {exp.config_path} --configuration "${{CONFIGURATION}}" --fold "${{FOLD}}" '
                                    '--trainer "${TRAINER}" --plans "${PLANS}"')
    assert cells.what.startswith("8 cell(s): nnUNetTrainer__nnUNetPlans/2d/fold_0, ")


def test_the_cascade_waits_for_the_lowres_tasks_of_its_own_trainer_and_plans(tmp_path: Path) -> None:
    exp = study(tmp_path, x={"configurations": ["3d_lowres", "3d_cascade_fullres"]})
    jobs = slurmchain.chain(exp, [], OPTS)
    assert [j.key for j in jobs] == ["cells", "cascade:nnUNetTrainer__nnUNetPlans",
                                     "cascade:nnUNetTrainer_Short__nnUNetPlans", "find_best"]
    cells, plain, short, best = jobs
    assert [c[0] for c in cells.spec.cells] == ["3d_lowres"] * 4
    assert plain.spec.cells == (("3d_cascade_fullres", "0", "nnUNetTrainer", "nnUNetPlans"),
                                ("3d_cascade_fullres", "1", "nnUNetTrainer", "nnUNetPlans"))
    assert {c[2] for c in short.spec.cells} == {"nnUNetTrainer_Short"} and len(short.spec.cells) == 2
    assert plain.after == (slurmchain.After("cells", (0, 1)),)
    assert short.after == (slurmchain.After("cells", (2, 3)),)
    assert best.after == tuple(slurmchain.After(j.key) for j in jobs[:3])
    short_lowres = [c for c in exp.cells if c.trainer == "nnUNetTrainer_Short" and c.configuration == "3d_lowres"]
    # the second trainer's lowres finished before: its cascade waits for nothing, the first's for its own tasks
    jobs = slurmchain.chain(exp, short_lowres, OPTS)
    assert [j.key for j in jobs][1:3] == ["cascade:nnUNetTrainer__nnUNetPlans",
                                          "cascade:nnUNetTrainer_Short__nnUNetPlans"]
    assert jobs[1].after == (slurmchain.After("cells", (0, 1)),) and jobs[2].after == ()


def test_two_trainers_give_two_cascade_arrays_each_after_its_own_lowres_tasks(tmp_path: Path) -> None:
    exp = study(tmp_path, x={"configurations": ["2d", "3d_lowres", "3d_cascade_fullres"]})
    jobs = slurmchain.chain(exp, [], OPTS)
    cells, plain, short, best = jobs
    # cells: A 2d (0, 1), A lowres (2, 3), B 2d (4, 5), B lowres (6, 7)
    assert cells.spec.cells[2][:3] == ("3d_lowres", "0", "nnUNetTrainer")
    assert cells.spec.cells[6][:3] == ("3d_lowres", "0", "nnUNetTrainer_Short")
    assert slurmchain.dependency(plain, {"cells": "100"}) == "afterok:100_2:100_3"
    assert slurmchain.dependency(short, {"cells": "100"}) == "afterok:100_6:100_7"
    ids = {"cells": "100", plain.key: "101", short.key: "102"}
    assert slurmchain.dependency(best, ids) == "afterok:100:101:102"
    stem = "nnunet-Dataset977_Thing-exp"
    assert [j.spec.job_name for j in jobs] == [f"{stem}-cells", f"{stem}-cascade-nnUNetTrainer__nnUNetPlans",
                                               f"{stem}-cascade-nnUNetTrainer_Short__nnUNetPlans",
                                               f"{stem}-find-best"]
    assert short.what == ("2 cell(s): nnUNetTrainer_Short__nnUNetPlans/3d_cascade_fullres/fold_0, "
                          "nnUNetTrainer_Short__nnUNetPlans/3d_cascade_fullres/fold_1")
    assert "#SBATCH --array=0-1" in slurm.render(short.spec)

    text = slurmchain.submitter(jobs)
    assert "CASCADE_NNUNETTRAINER__NNUNETPLANS=$(sbatch --parsable --dependency=afterok:${CELLS}_2:${CELLS}_3 <<" \
        in text
    assert ("CASCADE_NNUNETTRAINER_SHORT__NNUNETPLANS=$(sbatch --parsable --dependency=afterok:${CELLS}_6:"
            "${CELLS}_7 <<") in text
    assert ("FIND_BEST=$(sbatch --parsable --dependency=afterok:${CELLS}:${CASCADE_NNUNETTRAINER__NNUNETPLANS}:"
            "${CASCADE_NNUNETTRAINER_SHORT__NNUNETPLANS} <<") in text
    assert subprocess.run(["bash", "-n"], input=text, text=True).returncode == 0  # valid bash

    calls: list[list[str]] = []

    def sbatch(argv: list[str]) -> subprocess.CompletedProcess[str]:
        calls.append(argv)
        return subprocess.CompletedProcess(argv, 0, f"{200 + len(calls)}\n", "")

    assert slurmchain.submit(jobs, tmp_path / "slurm", sbatch) == ["201", "202", "203", "204"]
    assert [c[2] for c in calls[1:]] == ["--dependency=afterok:201_2:201_3", "--dependency=afterok:201_6:201_7",
                                         "--dependency=afterok:201:202:203"]
    assert Path(calls[2][-1]).name == f"{stem}-cascade-nnUNetTrainer_Short__nnUNetPlans.sbatch"


def test_a_job_key_becomes_a_valid_and_unique_shell_variable() -> None:
    assert slurmchain.shell_variable("find_best", set()) == "FIND_BEST"
    assert slurmchain.shell_variable("cascade:T.x__P", set()) == "CASCADE_T_X__P"
    assert slurmchain.shell_variable("cascade:T_x__P", {"CASCADE_T_X__P"}) == "CASCADE_T_X__P_2"
    assert slurmchain.shell_variable("9", set()) == "JOB_9"


def test_the_schedule_orders_the_cascade_per_trainer_and_plans(tmp_path: Path) -> None:
    lows = [Cell("3d_lowres", f, t, "P") for t in ("A", "B") for f in (0, 1)]
    cas = [Cell("3d_cascade_fullres", f, t, "P") for t in ("A", "B") for f in (0, 1)]
    sch = Scheduler({"3d_cascade_fullres": "3d_lowres"}, True, 3, ("3d_lowres", "3d_cascade_fullres"))
    s = State(cells={c: CellState() for c in lows + cas})
    s, actions = sch.step(s, Begin((Device("cpu", 8.0),), {"3d_lowres": 1.0, "3d_cascade_fullres": 1.0}))
    assert {a.cell for a in actions if isinstance(a, Start)} == set(lows)
    for c in lows[:2]:  # trainer A's lowres folds finish: only A's cascade starts
        s, actions = sch.step(s, FoldEnded(c, 0, None))
    assert {a.cell for a in actions if isinstance(a, Start)} == set(cas[:2])


def test_kubernetes_indexes_name_their_trainer_and_plans(tmp_path: Path) -> None:
    exp = study(tmp_path, kubernetes={"image": "img:1"})
    docs = k8s.manifests(exp, set())
    command = docs["20-cells-job.yaml"]["spec"]["template"]["spec"]["containers"][0]["command"][-1]
    assert "'2d 1 nnUNetTrainer_Short nnUNetPlans'" in command
    assert '--trainer "${TRAINER}" --plans "${PLANS}"' in command


def test_status_is_grouped_by_trainer_and_plans(tmp_path: Path) -> None:
    exp = study(tmp_path)
    info = view.status(exp)
    assert [(f["trainer"], f["configuration"], f["fold"]) for f in info["folds"]][:3] == [
        ("nnUNetTrainer", "2d", 0), ("nnUNetTrainer", "2d", 1), ("nnUNetTrainer", "3d_fullres", 0)]
    lines = view.table(info).splitlines()
    heads = [i for i, line in enumerate(lines) if line.endswith(" x nnUNetPlans:")]
    assert [lines[i] for i in heads] == ["nnUNetTrainer x nnUNetPlans:", "nnUNetTrainer_Short x nnUNetPlans:"]
    assert heads[1] - heads[0] == 5 and lines[heads[0] - 1].startswith("configuration")


def test_metrics_are_labelled_by_trainer_and_plans(tmp_path: Path) -> None:
    pytest.importorskip("prometheus_client")
    from supervisor.experiment.metrics import ExperimentMetrics

    exp = study(tmp_path)
    m = ExperimentMetrics(exp)
    m.update(State(cells={c: CellState() for c in exp.cells}), 0.0)
    from prometheus_client import generate_latest

    text = generate_latest(m.registry).decode()
    assert 'trainer="nnUNetTrainer_Short"' in text and 'plans="nnUNetPlans"' in text


def test_plans_with_other_configurations_give_each_its_own_cells(tmp_path: Path) -> None:
    exp = ExperimentContext.load(two_plans(tmp_path))
    assert [c.name for c in exp.cells] == [
        "nnUNetTrainer__nnUNetPlans/2d/fold_0", "nnUNetTrainer__nnUNetPlans/3d_fullres/fold_0",
        "nnUNetTrainer__nnUNetPlans/3d_lowres/fold_0", "nnUNetTrainer__nnUNetPlans/3d_cascade_fullres/fold_0",
        "nnUNetTrainer__nnUNetResEncUNetMPlans/2d/fold_0"]
    assert exp.study_of(exp.cells[4]).data_identifiers == {"2d": "nnUNetResEncUNetMPlans_2d"}
    argv = findbest.find_best_argv(exp, exp.configurations)
    assert argv is not None and argv[argv.index("-p") + 1:argv.index("-f")] == ["nnUNetPlans",
                                                                                  "nnUNetResEncUNetMPlans"]


@pytest.mark.parametrize(("nnunet", "section", "message"), [
    ({"trainer": "nnUNetTrainerX"}, {"trainers": TRAINERS},
     "nnunet.trainer (nnUNetTrainerX) and experiment.trainers (nnUNetTrainer, nnUNetTrainer_Short) both given"),
    ({"plans": "nnUNetPlans"}, {"plans": ["nnUNetPlans", "P2"]}, "nnunet.plans (nnUNetPlans) and experiment.plans"),
    ({}, {"trainers": []}, "experiment.trainers"),
    ({}, {"trainers": ["A", "A"]}, "distinct"),
    ({}, {"plans": ["a/b"]}, "experiment.plans"),
])
def test_bad_trainers_and_plans_are_refused(tmp_path: Path, nnunet: dict[str, Any], section: dict[str, Any],
                                            message: str) -> None:
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
        ExperimentContext.load(experiment(tmp_path, nnunet=nnunet, experiment=section))


def test_the_same_trainer_in_both_places_is_accepted(tmp_path: Path) -> None:
    exp = ExperimentContext.load(experiment(tmp_path, nnunet={"trainer": "nnUNetTrainer"},
                                            experiment={"trainers": ["nnUNetTrainer"]}))
    assert not exp.is_study


def test_a_plans_file_missing_names_experiment_plans(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"experiment\.plans: cannot read .*P2\.json"):
        ExperimentContext.load(experiment(tmp_path, experiment={"plans": ["nnUNetPlans", "P2"]}))


def test_the_prediction_takes_a_choice_among_the_experiments_trainers_and_plans(tmp_path: Path) -> None:
    from supervisor.pipeline.predict import plan
    from tests.unit.pipeline.test_predict import information, input_folder, write_json

    input_folder(tmp_path / "in")
    exp = study(tmp_path, predict={"input": "in", "output": "out"})
    write_json(exp.layout.root / "inference_information.json",
               information("2d", "3d_fullres", trainer="nnUNetTrainer_Short"))
    model = tmp_path / "r" / "Dataset977_Thing" / "nnUNetTrainer_Short__nnUNetPlans__2d"
    steps = plan(exp, tmp_path / "out").steps
    assert [s.name for s in steps] == ["predict 2d", "predict 3d_fullres", "ensemble", "postprocess"]
    assert steps[0].model is not None and steps[0].model.trainer == "nnUNetTrainer_Short"
    assert model.name in str(steps[0].output)
    write_json(exp.layout.root / "inference_information.json", information("2d", trainer="MyTrainer"))
    with pytest.raises(ConfigError, match="MyTrainer__nnUNetPlans__2d, not of this experiment's trainers x plans "
                                          "nnUNetTrainer__nnUNetPlans, nnUNetTrainer_Short__nnUNetPlans"):
        plan(exp, tmp_path / "out")


def test_a_kubernetes_cascade_index_waits_for_the_lowres_folds_of_its_own_trainer(tmp_path: Path) -> None:
    exp = study(tmp_path, x={"configurations": ["3d_lowres", "3d_cascade_fullres"]}, kubernetes={"image": "img:1"})
    docs = k8s.manifests(exp, set())
    init = docs["30-cascade-job.yaml"]["spec"]["template"]["spec"]["initContainers"][0]
    assert init["name"] == "wait" and init["command"][:2] == ["bash", "-c"]
    script = init["command"][2]
    assert "'3d_cascade_fullres 1 nnUNetTrainer_Short nnUNetPlans'" in script
    assert '--configuration 3d_lowres --trainer "${TRAINER}" --plans "${PLANS}"' in script
    # what the index's bash reads is what `wait` is given: the line of index 2 is the second trainer's fold 0
    table = [c for c in exp.cells if c.configuration == "3d_cascade_fullres"]
    assert table[2] == Cell("3d_cascade_fullres", 0, "nnUNetTrainer_Short", "nnUNetPlans")


def test_wait_filters_by_trainer_and_plans_and_names_what_is_unknown(tmp_path: Path,
                                                                    capsys: pytest.CaptureFixture[str]) -> None:
    from supervisor.experiment import commands

    exp = study(tmp_path)
    for cell in exp.cells:
        if cell.trainer == "nnUNetTrainer_Short":  # only the second trainer's folds finished
            fold = exp.fold_layout(cell).fold_dir
            (fold / "validation").mkdir(parents=True)
            (fold / "checkpoint_final.pth").write_bytes(b"x")
            (fold / "validation" / "summary.json").write_text("{}")
    assert commands.wait(exp.config_path, (), 0.1, ("nnUNetTrainer_Short",), ("nnUNetPlans",)) == 0
    assert "every one of 4 fold(s) finished" in capsys.readouterr().out
    with pytest.raises(ConfigError, match=r"--trainer: nnUNetTrainerX not in this experiment \(nnUNetTrainer, "):
        commands.wait(exp.config_path, (), 0.1, ("nnUNetTrainerX",))
