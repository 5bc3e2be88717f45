"""build_env puts torch.compile's caches (inductor, triton) beside the configuration's folds, unless the user chose."""

from __future__ import annotations

import dataclasses
from pathlib import Path

from supervisor.command import build_env
from tests.conftest import make_ctx

VARS = ("TORCHINDUCTOR_CACHE_DIR", "TRITON_CACHE_DIR")


def test_unset_caches_go_under_the_configurations_results_folder_shared_by_its_folds(tmp_path: Path) -> None:
    ctx = make_ctx(tmp_path, [])
    env = build_env(ctx, 1, base={"PATH": "/usr/bin"})
    config_dir = ctx.layout.fold_dir.parent  # <results>/<dataset>/<trainer>__<plans>__<configuration>
    assert config_dir.name == f"{ctx.config.nnunet.trainer}__{ctx.config.nnunet.plans}__" \
                              f"{ctx.config.nnunet.configuration}"
    assert env["TORCHINDUCTOR_CACHE_DIR"] == str(config_dir / ".compile-cache" / "inductor")
    assert env["TRITON_CACHE_DIR"] == str(config_dir / ".compile-cache" / "triton")
    other_fold = dataclasses.replace(ctx, layout=dataclasses.replace(ctx.layout, fold=3))
    assert {v: build_env(other_fold, 1, base={})[v] for v in VARS} == {v: env[v] for v in VARS}


def test_the_supervisors_environment_is_kept(tmp_path: Path) -> None:
    ctx = make_ctx(tmp_path, [])
    env = build_env(ctx, 1, base={"TORCHINDUCTOR_CACHE_DIR": "/fast/inductor", "TRITON_CACHE_DIR": "/fast/triton"})
    assert env["TORCHINDUCTOR_CACHE_DIR"] == "/fast/inductor" and env["TRITON_CACHE_DIR"] == "/fast/triton"


def test_nnunet_env_is_kept_and_an_unset_one_still_gets_ours(tmp_path: Path) -> None:
    ctx = make_ctx(tmp_path, [], nnunet_env={"TRITON_CACHE_DIR": "/mine/triton"})
    env = build_env(ctx, 1, base={"TRITON_CACHE_DIR": "/supervisor/triton"})
    assert env["TRITON_CACHE_DIR"] == "/mine/triton"  # nnunet.env over the supervisor's environment, as before
    assert env["TORCHINDUCTOR_CACHE_DIR"].endswith("/.compile-cache/inductor")


def test_an_empty_value_counts_as_unset(tmp_path: Path) -> None:
    ctx = make_ctx(tmp_path, [])
    env = build_env(ctx, 1, base={"TORCHINDUCTOR_CACHE_DIR": ""})
    assert env["TORCHINDUCTOR_CACHE_DIR"].endswith("/.compile-cache/inductor")
