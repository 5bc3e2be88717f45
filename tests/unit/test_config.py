"""run.yaml validation: defaults, strict types, and error lines naming the key path, the value and what is allowed."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from supervisor.config import Config, load_config, parse_config, resolve_paths, trainer_paths
from supervisor.errors import ConfigError

TOP_KEYS = ("nnunet, paths, restart, process, heartbeat, checkpoint, cooperative, power, metrics, notify, remedies, "
            "preprocess, predict")
NNUNET_KEYS = ("dataset, configuration, fold, trainer, plans, device, num_gpus, trainer_paths, extra_args, env, "
               "pretrained_weights")
RESTART_KEYS = "max_restarts, backoff_initial_s, backoff_max_s, max_attempts_without_progress, disk_check_s"


def minimal(**nnunet: Any) -> dict[str, Any]:
    return {"nnunet": {"dataset": 901, "configuration": "3d_fullres", **nnunet}}


def with_section(section: str, **values: Any) -> dict[str, Any]:
    data = minimal()
    data[section] = values
    return data


def problems(data: Any) -> list[str]:
    with pytest.raises(ConfigError) as info:
        parse_config(data)
    assert info.value.problems, "a ConfigError must carry at least one problem line"
    return info.value.problems


def only_problem(data: Any) -> str:
    found = problems(data)
    assert len(found) == 1, found
    return found[0]


# --- a valid config ---------------------------------------------------------------------------------------------


def test_minimal_config_fills_every_default() -> None:
    cfg = parse_config(minimal())

    assert cfg.nnunet.dataset == 901
    assert cfg.nnunet.configuration == "3d_fullres"
    assert cfg.nnunet.fold == 0
    assert (cfg.nnunet.trainer, cfg.nnunet.plans) == ("nnUNetTrainer", "nnUNetPlans")
    assert (cfg.nnunet.device, cfg.nnunet.num_gpus) == ("cuda", 1)
    assert (cfg.nnunet.trainer_paths, cfg.nnunet.extra_args, cfg.nnunet.env) == ([], [], {})
    assert (cfg.paths.nnUNet_raw, cfg.paths.nnUNet_preprocessed, cfg.paths.nnUNet_results) == (None, None, None)
    assert cfg.restart.max_restarts == 10
    assert (cfg.restart.backoff_initial_s, cfg.restart.backoff_max_s) == (10.0, 600.0)
    assert cfg.restart.max_attempts_without_progress == 3
    assert cfg.heartbeat.startup_grace_s == 900.0
    assert cfg.heartbeat.stall_timeout_s == "auto"
    assert cfg.checkpoint.on_incompatible == "stop"
    assert cfg.checkpoint.allow_fresh_start is False
    assert cfg.cooperative.enabled is False
    assert cfg.cooperative.save_every_epochs == 1
    assert cfg.cooperative.save_every_s is None


def test_full_contract_example_is_accepted() -> None:
    cfg = parse_config({
        "nnunet": {
            "dataset": "Dataset901_Tiny", "configuration": "2d", "fold": "all", "trainer": "nnUNetTrainer_5epochs",
            "plans": "nnUNetResEncUNetMPlans", "device": "cuda", "num_gpus": 2, "trainer_paths": ["trainers"],
            "extra_args": ["--npz"], "env": {"nnUNet_compile": "false"},
        },
        "paths": {"nnUNet_raw": None, "nnUNet_preprocessed": "/data/pre", "nnUNet_results": "/data/res"},
        "restart": {"max_restarts": 0, "backoff_initial_s": 1, "backoff_max_s": 1, "max_attempts_without_progress": 1},
        "heartbeat": {"startup_grace_s": 60, "stall_timeout_s": 300},
        "checkpoint": {"on_incompatible": "warm_start", "allow_fresh_start": True},
        "cooperative": {"enabled": False, "save_every_epochs": 5, "save_every_s": 1800},
    })

    assert cfg.nnunet.num_gpus == 2
    assert cfg.nnunet.extra_args == ["--npz"]
    assert cfg.restart.backoff_max_s == cfg.restart.backoff_initial_s == 1.0
    assert cfg.heartbeat.stall_timeout_s == 300.0
    assert cfg.checkpoint.on_incompatible == "warm_start"


# --- nnunet.dataset / nnunet.fold -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("given", "expected"),
    [(901, 901), (1, 1), (999, 999), ("901", 901), ("7", 7), ("Dataset901_Tiny", "Dataset901_Tiny"),
     ("Dataset042_Brain-Tumour_v2", "Dataset042_Brain-Tumour_v2")],
)
def test_dataset_accepts_id_digit_string_or_full_name(given: int | str, expected: int | str) -> None:
    assert parse_config(minimal(dataset=given)).nnunet.dataset == expected


@pytest.mark.parametrize("bad", [0, 1000, -3, "Tiny", "Dataset901", "Dataset1_Tiny", "dataset901_tiny", ""])
def test_dataset_rejects_bad_values_naming_what_is_allowed(bad: int | str) -> None:
    line = only_problem(minimal(dataset=bad))

    assert line.startswith(f"nnunet.dataset: got {bad!r}; allowed: ")
    assert "1 to 999" in line
    assert "Dataset901_Tiny" in line


def test_dataset_rejects_a_boolean() -> None:
    line = only_problem(minimal(dataset=True))
    assert line.startswith("nnunet.dataset: got True; allowed: ")


@pytest.mark.parametrize("fold", [0, 1, 4, 5, "all"])
def test_fold_accepts_numbers_and_all(fold: int | str) -> None:
    assert parse_config(minimal(fold=fold)).nnunet.fold == fold


def test_negative_fold_is_rejected() -> None:
    line = only_problem(minimal(fold=-1))
    assert line == 'nnunet.fold: got -1; allowed: a fold number 0, 1, 2, ... or "all"'


@pytest.mark.parametrize("bad", ["al", "ALL", "0", 1.5])
def test_fold_rejects_misspellings_and_strings(bad: Any) -> None:
    line = only_problem(minimal(fold=bad))

    assert line.startswith(f"nnunet.fold: got {bad!r}; allowed: ")
    assert "'all'" in line
    assert "integer" in line
    # pydantic's union-member tags (int, literal['all']) must not leak into the key path
    assert "literal" not in line.split(":")[0]


# --- unknown keys -----------------------------------------------------------------------------------------------


def test_unknown_top_level_key_suggests_the_close_one_and_lists_allowed_keys() -> None:
    data = minimal()
    data["restrat"] = {"max_restarts": 3}

    assert only_problem(data) == f"restrat: unknown key (did you mean 'restart'?); allowed here: {TOP_KEYS}"


def test_unknown_nested_key_names_the_full_path() -> None:
    line = only_problem(with_section("restart", max_restart=3))
    assert line == f"restart.max_restart: unknown key (did you mean 'max_restarts'?); allowed here: {RESTART_KEYS}"


def test_unknown_key_in_nnunet_section() -> None:
    line = only_problem(minimal(num_gpu=2))
    assert line == f"nnunet.num_gpu: unknown key (did you mean 'num_gpus'?); allowed here: {NNUNET_KEYS}"


def test_unknown_key_without_a_close_match_still_lists_allowed_keys() -> None:
    line = only_problem(with_section("heartbeat", zzz=1))
    assert line == ("heartbeat.zzz: unknown key; allowed here: startup_grace_s, stall_timeout_s, stall_floor_s, "
                    "validation_grace_s, linger_grace_s, nan_loss_epochs")



def test_unknown_hyphenated_top_level_key_is_a_config_error() -> None:
    data = minimal()
    data["max-restarts"] = 3

    line = only_problem(data)  # today: IndexError escapes parse_config instead of a ConfigError
    assert line.startswith("max-restarts: unknown key")



def test_unknown_hyphenated_nested_key_names_its_own_path() -> None:
    line = only_problem(minimal(**{"num-gpus": 2}))
    # today: "nnunet: unknown key (did you mean 'nnunet'?); allowed here: nnunet, paths, ..."
    assert line.startswith("nnunet.num-gpus: unknown key (did you mean 'num_gpus'?)")


def test_missing_required_keys_are_named() -> None:
    assert only_problem({"nnunet": {"dataset": 901}}) == "nnunet.configuration: required key is missing"
    assert only_problem({"restart": {}}) == "nnunet: required key is missing"


def test_every_problem_gets_its_own_line() -> None:
    data = minimal(device="gpu", fold="al")
    data["restart"] = {"max_restarts": "10"}
    data["heartbeat"] = {"stall_timout_s": 5}

    found = problems(data)

    assert len(found) == 4
    assert {line.split(":")[0] for line in found} == {
        "nnunet.device", "nnunet.fold", "restart.max_restarts", "heartbeat.stall_timout_s",
    }


# --- strict types and value rules -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("section", "key", "value", "allowed"),
    [
        ("restart", "max_restarts", "10", "integer"),
        ("restart", "max_restarts", True, "integer"),
        ("restart", "max_restarts", 2.5, "integer"),
        ("restart", "backoff_initial_s", "10", "number"),
        ("heartbeat", "startup_grace_s", True, "number"),
        ("checkpoint", "allow_fresh_start", "yes", "boolean"),
        ("checkpoint", "allow_fresh_start", 1, "boolean"),
        ("cooperative", "save_every_epochs", "1", "integer"),
    ],
)
def test_strict_types_reject_lookalikes(section: str, key: str, value: Any, allowed: str) -> None:
    line = only_problem(with_section(section, **{key: value}))

    assert line.startswith(f"{section}.{key}: got {value!r}; allowed: ")
    assert allowed in line


@pytest.mark.parametrize(("key", "value"), [("num_gpus", "2"), ("num_gpus", True), ("configuration", 3)])
def test_strict_types_in_nnunet_section(key: str, value: Any) -> None:
    line = only_problem(minimal(**{key: value}))
    assert line.startswith(f"nnunet.{key}: got {value!r}; allowed: ")


def test_ints_are_accepted_where_seconds_are_floats() -> None:
    cfg = parse_config(with_section("restart", backoff_initial_s=5, backoff_max_s=60))
    assert (cfg.restart.backoff_initial_s, cfg.restart.backoff_max_s) == (5.0, 60.0)


@pytest.mark.parametrize(
    ("section", "key", "value", "bound"),
    [
        ("restart", "max_restarts", -1, "greater than or equal to 0"),
        ("restart", "max_attempts_without_progress", 0, "greater than or equal to 1"),
        ("heartbeat", "startup_grace_s", -1, "greater than or equal to 0"),
        ("cooperative", "save_every_s", 0, "greater than 0"),
    ],
)
def test_out_of_range_numbers_name_the_bound(section: str, key: str, value: Any, bound: str) -> None:
    assert only_problem(with_section(section, **{key: value})) == f"{section}.{key}: got {value!r}; allowed: {bound}"


def test_enum_values_are_listed() -> None:
    assert only_problem(minimal(device="gpu")) == "nnunet.device: got 'gpu'; allowed: 'cuda', 'cpu' or 'mps'"
    line = only_problem(with_section("checkpoint", on_incompatible="ignore"))
    assert line == "checkpoint.on_incompatible: got 'ignore'; allowed: 'stop' or 'warm_start'"


@pytest.mark.parametrize("bad", ["my-trainer", "1Trainer", "nnUNetTrainer "])
def test_trainer_must_be_an_identifier(bad: str) -> None:
    line = only_problem(minimal(trainer=bad))
    assert line == f"nnunet.trainer: got {bad!r}; allowed: a Python identifier (letters, digits, underscore)"


def test_backoff_max_below_initial_is_rejected_with_both_values() -> None:
    line = only_problem(with_section("restart", backoff_initial_s=100, backoff_max_s=5))

    assert line.startswith("restart: ")
    assert "backoff_max_s >= backoff_initial_s (got 5.0 < 100.0)" in line


def test_backoff_initial_above_default_max_is_rejected() -> None:
    line = only_problem(with_section("restart", backoff_initial_s=700))
    assert "(got 600.0 < 700.0)" in line


@pytest.mark.parametrize("reserved", ["--c", "-tr", "-p", "-device", "-num_gpus", "--val", "-pretrained_weights"])
def test_extra_args_may_not_carry_what_the_supervisor_sets(reserved: str) -> None:
    line = only_problem(minimal(extra_args=["--npz", reserved]))

    assert line.startswith("nnunet.extra_args: got ")
    assert f"({reserved} given)" in line
    assert "the supervisor sets those itself" in line


def test_extra_args_pass_through_other_flags() -> None:
    assert parse_config(minimal(extra_args=["--npz", "--disable_checkpointing"])).nnunet.extra_args == [
        "--npz", "--disable_checkpointing",
    ]


def test_several_gpus_need_cuda() -> None:
    line = only_problem(minimal(num_gpus=2, device="cpu"))

    assert line.startswith("nnunet: got ")
    assert "num_gpus > 1 only with device: cuda" in line
    assert "got 2" in line
    assert parse_config(minimal(num_gpus=2, device="cuda")).nnunet.num_gpus == 2


def test_cooperative_mode_is_single_process_only() -> None:
    cfg = parse_config(with_section("cooperative", enabled=True, save_every_s=600, stop_timeout_s=300))
    assert cfg.cooperative.enabled and cfg.cooperative.stop_timeout_s == 300
    data = with_section("cooperative", enabled=True)
    data["nnunet"].update(num_gpus=2, device="cuda")
    line = only_problem(data)
    assert "cooperative.enabled: true needs nnunet.num_gpus: 1 (got 2)" in line


@pytest.mark.parametrize(("value", "expected"), [("auto", "auto"), (120, 120.0), (0.5, 0.5)])
def test_stall_timeout_is_auto_or_seconds(value: Any, expected: Any) -> None:
    assert parse_config(with_section("heartbeat", stall_timeout_s=value)).heartbeat.stall_timeout_s == expected


@pytest.mark.parametrize(("value", "allowed"), [
    ("soon", "'auto' or a valid number"),
    ("120", "'auto' or a valid number"),
    (True, "'auto' or a valid number"),
    (0, '"auto" or a number of seconds > 0'),
    (-5, '"auto" or a number of seconds > 0'),
])
def test_stall_timeout_rejects_other_values(value: Any, allowed: str) -> None:
    assert only_problem(with_section("heartbeat", stall_timeout_s=value)) == (
        f"heartbeat.stall_timeout_s: got {value!r}; allowed: {allowed}"
    )


@pytest.mark.parametrize("document", [None, [], ["nnunet"], "nnunet", 901])
def test_non_mapping_document_is_rejected(document: Any) -> None:
    line = only_problem(document)
    assert line == (
        f"the top level must be a mapping with an 'nnunet' section, got {type(document).__name__}"
    )


# --- load_config ------------------------------------------------------------------------------------------------


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "run.yaml"
    path.write_text(text)
    return path


def test_load_config_reads_yaml(tmp_path: Path) -> None:
    path = write(tmp_path, "nnunet:\n  dataset: Dataset901_Tiny\n  configuration: 2d\n  fold: all\n"
                           "heartbeat:\n  stall_timeout_s: auto\n")

    cfg = load_config(path)

    assert isinstance(cfg, Config)
    assert (cfg.nnunet.dataset, cfg.nnunet.configuration, cfg.nnunet.fold) == ("Dataset901_Tiny", "2d", "all")


def test_yaml_strings_are_not_coerced(tmp_path: Path) -> None:
    path = write(tmp_path, "nnunet:\n  dataset: 901\n  configuration: 3d_fullres\nrestart:\n  max_restarts: '10'\n")

    with pytest.raises(ConfigError) as info:
        load_config(path)

    assert info.value.problems == ["restart.max_restarts: got '10'; allowed: a valid integer"]
    assert info.value.source == str(path)
    assert str(info.value).startswith(f"{path}: restart.max_restarts")


def test_yaml_syntax_error(tmp_path: Path) -> None:
    path = write(tmp_path, "nnunet:\n  dataset: 901\n  configuration: [3d_fullres\n")

    with pytest.raises(ConfigError) as info:
        load_config(path)

    [line] = info.value.problems
    assert line.startswith("not valid YAML: ")
    assert "line" in line  # yaml's message points at the position
    assert info.value.source == str(path)


@pytest.mark.parametrize(("text", "type_name"), [("", "NoneType"), ("- a\n- b\n", "list"), ("just text\n", "str")])
def test_yaml_document_that_is_not_a_mapping(tmp_path: Path, text: str, type_name: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(write(tmp_path, text))

    assert info.value.problems == [f"the top level must be a mapping with an 'nnunet' section, got {type_name}"]


def test_missing_config_file(tmp_path: Path) -> None:
    path = tmp_path / "nope.yaml"

    with pytest.raises(ConfigError) as info:
        load_config(path)

    assert info.value.problems == [f"cannot read {path}: No such file or directory"]
    assert info.value.exit_code == 2


# --- resolve_paths / trainer_paths ------------------------------------------------------------------------------


def test_paths_default_to_the_environment(tmp_path: Path) -> None:
    environ = {"nnUNet_raw": "/env/raw", "nnUNet_preprocessed": "/env/pre", "nnUNet_results": "/env/res"}

    paths = resolve_paths(parse_config(minimal()), tmp_path, environ)

    assert (paths.raw, paths.preprocessed, paths.results) == (Path("/env/raw"), Path("/env/pre"), Path("/env/res"))


def test_config_paths_win_over_the_environment(tmp_path: Path) -> None:
    data = minimal()
    data["paths"] = {"nnUNet_results": "/cfg/res"}
    environ = {"nnUNet_preprocessed": "/env/pre", "nnUNet_results": "/env/res"}

    paths = resolve_paths(parse_config(data), tmp_path, environ)

    assert paths.results == Path("/cfg/res")
    assert paths.preprocessed == Path("/env/pre")
    assert paths.raw is None  # raw is optional: training does not need it


def test_relative_paths_count_from_the_base_folder(tmp_path: Path) -> None:
    data = minimal()
    data["paths"] = {"nnUNet_preprocessed": "pre", "nnUNet_results": "../results"}

    paths = resolve_paths(parse_config(data), tmp_path / "cfg", {})

    assert paths.preprocessed == (tmp_path / "cfg" / "pre").resolve()
    assert paths.results == (tmp_path / "results").resolve()
    assert paths.preprocessed.is_absolute() and paths.results.is_absolute()


def test_missing_results_folder_is_named(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        resolve_paths(parse_config(minimal()), tmp_path, {"nnUNet_preprocessed": "/env/pre"})

    assert info.value.problems == [
        "paths.nnUNet_results: not set in the config and $nnUNet_results is not in the environment",
    ]


def test_both_missing_folders_are_named(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        resolve_paths(parse_config(minimal()), tmp_path, {"nnUNet_raw": "/env/raw"})

    assert [line.split(":")[0] for line in info.value.problems] == ["paths.nnUNet_preprocessed", "paths.nnUNet_results"]


def test_explicit_environ_replaces_the_process_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("nnUNet_preprocessed", "/process/pre")
    monkeypatch.setenv("nnUNet_results", "/process/res")

    assert resolve_paths(parse_config(minimal()), tmp_path).results == Path("/process/res")
    with pytest.raises(ConfigError):
        resolve_paths(parse_config(minimal()), tmp_path, {})


def test_trainer_paths_are_made_absolute(tmp_path: Path) -> None:
    cfg = parse_config(minimal(trainer_paths=["trainers", "/opt/trainers"]))
    assert trainer_paths(cfg, tmp_path) == [(tmp_path / "trainers").resolve(), Path("/opt/trainers")]


def test_a_file_that_is_not_utf8_is_a_config_error_naming_the_byte(tmp_path: Path) -> None:
    path = tmp_path / "run.yaml"
    path.write_bytes(b"nnunet:\n  dataset: 4\n  configuration: 2d  # \xff\xfe\x00\n")
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert info.value.source == str(path) and info.value.exit_code == 2
    assert info.value.problems == ["not UTF-8 text: byte 44 is 0xff (invalid start byte); save the file as UTF-8 "
                                   "(YAML's encoding)"]


def test_a_problem_found_after_loading_is_headed_by_the_files_path(tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    from supervisor.context import RunContext

    monkeypatch.delenv("nnUNet_results", raising=False)
    path = tmp_path / "run.yaml"
    path.write_text(f"nnunet: {{dataset: 4, configuration: 2d}}\npaths: {{nnUNet_preprocessed: {tmp_path}}}\n")
    with pytest.raises(ConfigError) as info:
        RunContext.load(path)
    assert info.value.source == str(path)
    assert info.value.problems == ["paths.nnUNet_results: not set in the config and $nnUNet_results is not in the "
                                   "environment"]
