"""`nnunet-supervise init run|experiment`: commented files written before anything runs. The run.yaml holds exactly
what `train` writes for the same arguments; the experiment file is what the dataset's plans and splits say; every
commented-out key is the model's own default."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any, Union, get_args, get_origin

import pytest
import yaml
from click.testing import CliRunner
from pydantic import BaseModel

from supervisor.cli import main
from supervisor.config import Config, parse_config
from supervisor.experiment.context import ExperimentContext
from supervisor.expfile import ExperimentFile, parse_experiment
from supervisor.scaffold import EXAMPLES, init_experiment, init_run

# `# key: value`, exactly one space after the # (prose never starts so)
COMMENTED_KEY = re.compile(r"^(\s*)# (['A-Za-z_][A-Za-z0-9_']*):(\s|$)")
KEY = re.compile(r"^(\s*)(['A-Za-z_][A-Za-z0-9_']*):(\s|$)")
WHEN = "2026-01-01 00:00:00"


@pytest.fixture
def env(tmp_path: Path) -> dict[str, str]:
    pre, res, raw = tmp_path / "pre", tmp_path / "res", tmp_path / "raw"
    for d in (pre / "Dataset004_Hippocampus", res, raw / "Dataset004_Hippocampus"):
        d.mkdir(parents=True)
    return {"nnUNet_preprocessed": str(pre), "nnUNet_results": str(res), "nnUNet_raw": str(raw)}


class Said:
    def __init__(self) -> None:
        self.lines: list[str] = []

    def __call__(self, line: str) -> None:
        self.lines.append(line)

    @property
    def text(self) -> str:
        return "\n".join(self.lines)


def write_plans(env: dict[str, str], name: str = "nnUNetPlans", with_data: bool = True,
                configurations: tuple[str, ...] = ("2d", "3d_fullres", "3d_lowres", "3d_cascade_fullres")) -> Path:
    dataset = Path(env["nnUNet_preprocessed"]) / "Dataset004_Hippocampus"
    entries: dict[str, dict[str, Any]] = {
        "2d": {"data_identifier": f"{name}_2d"}, "3d_fullres": {"data_identifier": f"{name}_3d_fullres"},
        "3d_lowres": {"data_identifier": f"{name}_3d_lowres", "next_stage": "3d_cascade_fullres"},
        "3d_cascade_fullres": {"inherits_from": "3d_fullres", "previous_stage": "3d_lowres"},
        "3d_fullres_bs4": {"inherits_from": "3d_fullres"}}
    (dataset / f"{name}.json").write_text(json.dumps(
        {"plans_name": name, "configurations": {c: entries[c] for c in configurations}}))
    if with_data:
        for c in configurations:
            ident = entries[c].get("data_identifier")
            if ident:
                (dataset / ident).mkdir(exist_ok=True)
    return dataset


def uncommented(text: str) -> str:
    """Every commented-out key (and block) of the file, uncommented; prose left alone."""
    return "\n".join(m.group(1) + line[len(m.group(1)) + 2:] if (m := COMMENTED_KEY.match(line)) else line
                     for line in _blocks(text)) + "\n"


def _is_header(body: str) -> bool:
    """`key:` with nothing after it but a comment: a section's header."""
    return body.split("#", 1)[0].rstrip().endswith(":")


def _blocks(text: str) -> list[str]:
    """The file's lines, a commented-out block's inner lines (`#   key: value` under `# section:`) made commented keys
    at their own indentation (`  # key: value`), so that `uncommented` and `commented_defaults` take them as such."""
    out: list[str] = []
    block: int | None = None  # the indentation of the `# section:` whose block this is
    for line in text.splitlines():
        inner = re.match(r"^(\s*)# (\s+)(?=['A-Za-z_#])", line)
        if block is not None and inner and len(inner.group(1)) == block:
            out.append(inner.group(1) + inner.group(2) + "# " + line[inner.end():].removeprefix("# "))
            continue
        m = COMMENTED_KEY.match(line)
        block = len(m.group(1)) if m and _is_header(line[len(m.group(1)) + 2:]) else None
        out.append(line)
    return out


def commented_defaults(text: str) -> list[tuple[tuple[str, ...], Any]]:
    """(key path, value) of every commented-out key, its section found by indentation."""
    found = []
    stack: list[tuple[int, str]] = []
    for line in _blocks(text):
        m = COMMENTED_KEY.match(line) or KEY.match(line)
        if not m:
            continue
        indent, key = len(m.group(1)), yaml.safe_load(f"{m.group(2)}: x").popitem()[0]
        while stack and stack[-1][0] >= indent:
            stack.pop()
        path = (*[k for _, k in stack], str(key))
        body = line[len(m.group(1)) + (2 if COMMENTED_KEY.match(line) else 0):]
        value = yaml.safe_load(body)[key]
        if value is None and _is_header(body):  # a section's header
            stack.append((indent, str(key)))
            continue
        if COMMENTED_KEY.match(line):
            found.append((path, value))
    return found


def model_default(model: type[BaseModel], path: tuple[str, ...]) -> Any:
    for part in path[:-1]:
        ann = model.model_fields[part].annotation
        members = get_args(ann) if get_origin(ann) is Union else (ann,)
        model = next(m for m in members if isinstance(m, type) and issubclass(m, BaseModel))
    return model.model_fields[path[-1]].get_default(call_default_factory=True)


def train_writes(args: list[str], env: dict[str, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Any:
    """The run.yaml document `nnunet-supervise train ARGS --write-only` writes into the fold's folder."""
    monkeypatch.chdir(tmp_path)
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    r = CliRunner().invoke(main, ["train", *args, "--write-only"])
    assert r.exit_code == 0, r.output
    written = next(Path(env["nnUNet_results"]).rglob("run.yaml"))  # fold_<fold>/supervisor/run.yaml
    return yaml.safe_load(written.read_text())


def without_nulls(doc: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in doc.items() if v is not None}


@pytest.mark.parametrize("args", [
    ["4", "3d_fullres", "0"],
    ["4", "2d", "1", "-tr", "MyTrainer", "-p", "nnUNetResEncUNetMPlans"],
    ["Dataset004_Hippocampus", "3d_lowres", "all", "--npz", "-device", "cpu"],
    ["4", "3d_fullres", "2", "-num_gpus", "2", "--c"],
    ["4", "3d_fullres", "0", "-pretrained_weights", "w.pth", "--npz", "--val_best"],
    ["4", "3d_fullres", "0", "--cooperative", "--max-restarts", "3", "--disable_checkpointing"],
])
def test_the_run_file_is_what_train_writes(args: list[str], env: dict[str, str], tmp_path: Path,
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "w.pth").write_bytes(b"x")
    said = Said()
    assert init_run(args, tmp_path, env, said, WHEN) == 0, said.text
    text = (tmp_path / "run.yaml").read_text()
    doc = yaml.safe_load(text)
    train = train_writes(args, env, tmp_path, monkeypatch)
    assert without_nulls(doc) == train  # the same keys and values; the sections at their defaults read as null
    assert parse_config(doc, "init") == parse_config(train, "train")
    assert parse_config(doc, "init").model_dump() == parse_config(train, "train").model_dump()
    assert text.startswith("# nnunet-supervise run.yaml") and f"`nnunet-supervise init run {' '.join(args)}`" in \
        " ".join(text.splitlines()[:3]).replace("# ", "")
    assert f"wrote {tmp_path / 'run.yaml'}" in said.text
    assert "nnunet-supervise check run.yaml" in said.text and "nnunet-supervise run run.yaml" in said.text


def test_every_commented_default_is_the_models_default(env: dict[str, str], tmp_path: Path) -> None:
    assert init_run(["4", "3d_fullres", "0", "-tr", "T"], tmp_path, env, Said(), WHEN) == 0
    write_plans(env)
    assert init_experiment(["4"], tmp_path, env, Said(), WHEN) == 0
    for name, model in (("run.yaml", Config), ("experiment.yaml", ExperimentFile)):
        text = (tmp_path / name).read_text()
        found = commented_defaults(text)
        assert len(found) > 60, found  # every section's keys are there
        for path, value in found:
            if model is ExperimentFile and ".".join(path) in EXAMPLES:  # the predict section, commented out whole
                assert value == EXAMPLES[".".join(path)]
                continue
            assert value == model_default(model, path), path
        # every section of the model is in the file, every key of it set or commented out
        doc_keys = {p[0] for p, _ in found} | set(yaml.safe_load(text))
        assert set(model.model_fields) <= doc_keys
        # and uncommented all at once it is still a valid file, with the same settings but the examples
        whole = yaml.safe_load(uncommented(text))
        assert isinstance(whole, dict)
        if model is Config:
            assert parse_config(whole, "all") == parse_config(yaml.safe_load(text), "set")
        else:
            spec = parse_experiment(whole, "all")
            assert spec.predict.input == EXAMPLES["predict.input"]
            plain = parse_experiment(yaml.safe_load(text), "set")
            assert spec.model_copy(update={"predict": plain.predict}) == plain


def test_commented_sections_cover_every_key(env: dict[str, str], tmp_path: Path) -> None:
    """A key added to a section model appears in the file by itself (the file is made from the models)."""
    assert init_run(["4", "3d_fullres", "0"], tmp_path, env, Said(), WHEN) == 0
    text = (tmp_path / "run.yaml").read_text()
    seen = {path for path, _ in commented_defaults(text)}
    for section in ("restart", "heartbeat", "checkpoint", "cooperative", "process", "remedies", "predict"):
        sub = model_default(Config, (section,))
        for key in type(sub).model_fields:
            assert (section, key) in seen, (section, key)
    for key in ("max_restarts", "backoff_initial_s", "backoff_max_s", "stall_timeout_s", "allow_fresh_start",
                "save_on_stop", "snapshot_every_s"):
        assert re.search(rf"^  # {key}: .+# \S", text, re.M), key  # with its explanation beside it


def test_the_experiment_file_from_the_plans_and_the_splits(env: dict[str, str], tmp_path: Path) -> None:
    dataset = write_plans(env, configurations=("2d", "3d_fullres", "3d_lowres", "3d_cascade_fullres", "3d_fullres_bs4"))
    (dataset / "splits_final.json").write_text(json.dumps([{"train": [], "val": []}] * 3))
    said = Said()
    assert init_experiment(["4"], tmp_path, env, said, WHEN) == 0, said.text
    path = tmp_path / "experiment.yaml"
    doc = yaml.safe_load(path.read_text())
    spec = parse_experiment(doc, "test")
    assert spec.experiment.configurations == ["2d", "3d_fullres", "3d_lowres", "3d_cascade_fullres"]
    assert spec.experiment.folds == [0, 1, 2]
    assert spec.experiment.preprocess is False and spec.experiment.devices.gpus == "auto"
    assert spec.nnunet.dataset == 4 and spec.nnunet.device == "cuda"
    assert spec.predict.input is None  # the predict section is there, commented out
    text = path.read_text()
    assert "# predict:\n#   input: /data/imagesTs" in text and "3d_fullres_bs4" not in doc["experiment"][
        "configurations"]
    assert "Also in the plans, not trained unless listed in experiment.configurations: 3d_fullres_bs4" in text
    exp = ExperimentContext.load(path)  # the experiment supervisor's own reading of it
    assert exp.configurations == ["2d", "3d_fullres", "3d_lowres", "3d_cascade_fullres"]
    assert len(exp.cells) == 12 and exp.waits_for == {"3d_cascade_fullres": "3d_lowres"}
    assert f"wrote {path}" in said.text and "nnunet-supervise check experiment.yaml" in said.text


def test_the_experiments_own_choices_and_a_study(env: dict[str, str], tmp_path: Path) -> None:
    write_plans(env)
    write_plans(env, "nnUNetResEncUNetMPlans", configurations=("2d", "3d_fullres"))
    said = Said()
    assert init_experiment(["Dataset004_Hippocampus", "-tr", "A", "B", "-p", "nnUNetPlans", "nnUNetResEncUNetMPlans",
                            "-f", "0", "1", "-device", "cpu", "-o", "study.yaml"], tmp_path, env, said, WHEN) == 0
    spec = parse_experiment(yaml.safe_load((tmp_path / "study.yaml").read_text()), "test")
    assert spec.experiment.trainers == ["A", "B"] and spec.experiment.plans == ["nnUNetPlans",
                                                                                "nnUNetResEncUNetMPlans"]
    assert spec.experiment.configurations == ["2d", "3d_fullres"]  # what every plans file has
    assert spec.experiment.folds == [0, 1] and spec.nnunet.device == "cpu" and spec.experiment.devices.slots == 1
    assert "trainer" not in spec.nnunet.model_fields_set and "plans" not in spec.nnunet.model_fields_set
    whole = yaml.safe_load(uncommented((tmp_path / "study.yaml").read_text()))
    parse_experiment(whole, "all uncommented")  # no commented nnunet.trainer to clash with experiment.trainers
    # the cascade without its 3d_lowres is left out
    write_plans(env, "Other", configurations=("3d_fullres", "3d_cascade_fullres"))
    assert init_experiment(["4", "-p", "Other", "-o", "o.yaml"], tmp_path, env, Said(), WHEN) == 0
    assert yaml.safe_load((tmp_path / "o.yaml").read_text())["experiment"]["configurations"] == ["3d_fullres"]
    # -c: checked against the plans
    said = Said()
    assert init_experiment(["4", "-c", "3d_lowres", "-p", "Other", "-o", "x.yaml"], tmp_path, env, said, WHEN) == 2
    assert "-c 3d_lowres: not in Other.json" in said.text and "available: 3d_fullres, 3d_cascade_fullres" in said.text
    assert not (tmp_path / "x.yaml").exists()


def test_not_preprocessed_yet_means_preprocess_first(env: dict[str, str], tmp_path: Path) -> None:
    said = Said()
    assert init_experiment(["4"], tmp_path, env, said, WHEN) == 0
    text = (tmp_path / "experiment.yaml").read_text()
    spec = parse_experiment(yaml.safe_load(text), "test")
    assert spec.experiment.preprocess is True and spec.experiment.configurations is None
    assert spec.experiment.folds == [0, 1, 2, 3, 4]
    assert "not there yet" in said.text and "experiment.preprocess: true" in said.text
    assert "experiment.preprocess is true" in text and "Not preprocessed yet" in text
    said = Said()
    assert init_experiment(["4", "-c", "2d", "3d_fullres", "-p", "nnUNetResEncUNetLPlans", "-o", "l.yaml"], tmp_path,
                           env, said, WHEN) == 0
    spec = parse_experiment(yaml.safe_load((tmp_path / "l.yaml").read_text()), "test")
    assert spec.experiment.configurations == ["2d", "3d_fullres"] and spec.experiment.preprocess
    assert spec.preprocess.planner == "nnUNetPlannerResEncL"  # the planner that writes those plans
    # plans there, a configuration's data not: preprocess it first
    write_plans(env, with_data=False)
    assert init_experiment(["4", "-o", "d.yaml"], tmp_path, env, Said(), WHEN) == 0
    assert parse_experiment(yaml.safe_load((tmp_path / "d.yaml").read_text()), "t").experiment.preprocess


def test_an_existing_file_is_not_overwritten_without_force(env: dict[str, str], tmp_path: Path) -> None:
    (tmp_path / "run.yaml").write_text("mine\n")
    said = Said()
    assert init_run(["4", "2d", "0"], tmp_path, env, said, WHEN) == 2
    assert "exists; not overwritten (--force overwrites it)" in said.text
    assert (tmp_path / "run.yaml").read_text() == "mine\n"
    assert init_run(["4", "2d", "0", "--force"], tmp_path, env, Said(), WHEN) == 0
    assert yaml.safe_load((tmp_path / "run.yaml").read_text())["nnunet"]["configuration"] == "2d"
    (tmp_path / "experiment.yaml").write_text("mine\n")
    said = Said()
    assert init_experiment(["4"], tmp_path, env, said, WHEN) == 2 and "--force" in said.text
    assert (tmp_path / "experiment.yaml").read_text() == "mine\n"
    # -o a folder: the default name in it
    (tmp_path / "sub").mkdir()
    assert init_run(["4", "2d", "0", "-o", "sub"], tmp_path, env, Said(), WHEN) == 0
    assert (tmp_path / "sub" / "run.yaml").is_file()


@pytest.mark.parametrize(("args", "words"), [
    (["4", "2d", "0", "--bogus"], "not an option of nnUNetv2_train or ours: --bogus"),
    (["4", "2d", "0", "--bogus"], "-tr (nnunet.trainer)"),
    (["4", "2d"], "Usage: nnunet-supervise init run DATASET CONFIGURATION FOLD"),
    (["4", "2d", "0", "--write-only"], "only writes the file anyway"),
    (["9", "2d", "0"], "no folder Dataset009_*"),
    (["Dataset009_Nope", "2d", "0"], "no folder Dataset009_Nope in"),
    (["4", "2d", "0", "-o"], "-o needs a file name"),
    (["4", "2d", "0", "-device", "cpu", "-num_gpus", "2"], "num_gpus > 1 only with device: cuda"),
])
def test_init_run_refuses_clearly(args: list[str], words: str, env: dict[str, str], tmp_path: Path) -> None:
    said = Said()
    assert init_run(args, tmp_path, env, said, WHEN) == 2
    assert words in said.text, said.text
    assert not (tmp_path / "run.yaml").exists()


def test_the_environment_must_name_nnunets_folders(env: dict[str, str], tmp_path: Path) -> None:
    said = Said()
    assert init_run(["4", "2d", "0"], tmp_path, {"nnUNet_preprocessed": env["nnUNet_preprocessed"]}, said) == 2
    assert "$nnUNet_results is not set" in said.text
    said = Said()
    assert init_experiment(["4"], tmp_path, {}, said) == 2
    assert "$nnUNet_preprocessed is not set" in said.text and "$nnUNet_results is not set" in said.text


@pytest.mark.parametrize(("args", "words"), [
    (["4", "--bogus"], "not an option of init experiment: --bogus"),
    ([], "the dataset (an id or DatasetXXX_Name) is missing"),
    (["4", "-device", "tpu"], "-device tpu: cuda, cpu or mps"),
    (["4", "-f", "x"], "-f x: a fold number"),
    (["4", "-c"], "-c needs at least one value"),
    (["12"], "no folder Dataset012_* in"),
])
def test_init_experiment_refuses_clearly(args: list[str], words: str, env: dict[str, str], tmp_path: Path) -> None:
    said = Said()
    assert init_experiment(args, tmp_path, env, said, WHEN) == 2
    assert words in said.text, said.text
    assert not (tmp_path / "experiment.yaml").exists()


def test_a_fold_beyond_the_splits_is_refused(env: dict[str, str], tmp_path: Path) -> None:
    dataset = write_plans(env)
    (dataset / "splits_final.json").write_text(json.dumps([{"train": [], "val": []}] * 3))
    said = Said()
    assert init_experiment(["4", "-f", "0", "3"], tmp_path, env, said, WHEN) == 2
    assert "-f 3:" in said.text and "has 3 folds (0-2)" in said.text
    said = Said()  # init run refuses the same fold, as nnUNetv2_train would fail on it
    assert init_run(["4", "2d", "3"], tmp_path, env, said, WHEN) == 2
    assert "FOLD 3: " in said.text and "has 3 folds (0-2)" in said.text and not (tmp_path / "run.yaml").exists()
    assert init_run(["4", "2d", "2"], tmp_path, env, Said(), WHEN) == 0


def test_the_cli_commands(env: dict[str, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    r = CliRunner().invoke(main, ["init", "run", "4", "2d", "0", "-tr", "T", "--npz", "-o", "r.yaml"])
    assert r.exit_code == 0, r.output
    assert parse_config(yaml.safe_load((tmp_path / "r.yaml").read_text()), "t").nnunet.trainer == "T"
    r = CliRunner().invoke(main, ["init", "run", "4", "2d", "0", "-o", "r.yaml"])
    assert r.exit_code == 2 and "--force" in r.output
    write_plans(env)
    r = CliRunner().invoke(main, ["init", "experiment", "4", "-c", "2d", "-f", "0", "1"])
    assert r.exit_code == 0, r.output
    spec = parse_experiment(yaml.safe_load((tmp_path / "experiment.yaml").read_text()), "t")
    assert spec.experiment.configurations == ["2d"] and spec.experiment.folds == [0, 1]
