"""run.yaml mutated at random (hypothesis): every mutation is accepted or refused with exit 2 and a message that
names a key (or the file), never a traceback."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import yaml
from click.testing import CliRunner
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from supervisor.cli import main
from supervisor.config import Config
from supervisor.context import RunContext
from supervisor.errors import ConfigError

VALID: dict[str, Any] = {
    "nnunet": {"dataset": 901, "configuration": "3d_fullres", "fold": 0, "trainer": "nnUNetTrainer",
               "device": "cpu", "extra_args": [], "env": {"nnUNet_n_proc_DA": "1"}},
    "restart": {"max_restarts": 3, "backoff_initial_s": 1, "backoff_max_s": 5},
    "heartbeat": {"stall_timeout_s": "auto", "validation_grace_s": 60},
    "cooperative": {"enabled": True, "save_every_epochs": 1},
    "process": {"attempt_log_max_mb": 64},
}
VALUES = st.recursive(st.none() | st.booleans() | st.integers(-10**12, 10**12) | st.floats() | st.text(max_size=10),
                      lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner,
                                                                                  max_size=3), max_leaves=5)
SECTIONS = sorted(Config.model_fields)


@st.composite
def mutated(draw: st.DrawFn) -> bytes:
    doc = json.loads(json.dumps(VALID))
    for _ in range(draw(st.integers(1, 3))):
        how = draw(st.sampled_from(["value", "drop", "add", "section"]))
        section = draw(st.sampled_from(sorted(doc)))
        body = doc[section]
        if how == "section":
            doc[draw(st.sampled_from([*SECTIONS, "nnunets", "x"]))] = draw(VALUES)
        elif not isinstance(body, dict) or not body:
            doc[section] = draw(VALUES)
        elif how == "value":
            body[draw(st.sampled_from(sorted(body)))] = draw(VALUES)
        elif how == "drop":
            body.pop(draw(st.sampled_from(sorted(body))))
        else:
            body[draw(st.text(min_size=1, max_size=12))] = draw(VALUES)
    text = yaml.safe_dump(doc).encode()
    if draw(st.booleans()):  # damaged bytes on top: cut, or a byte changed
        i = draw(st.integers(0, len(text) - 1))
        text = text[:i] if draw(st.booleans()) else text[:i] + bytes([draw(st.integers(0, 255))]) + text[i + 1:]
    return text


def write(tmp_path: Path, raw: bytes) -> Path:
    (tmp_path / "pre" / "Dataset901_Tiny").mkdir(parents=True, exist_ok=True)
    path = tmp_path / "run.yaml"
    text = raw.replace(b"paths:", b"paths_:")  # keep the folders ours
    path.write_bytes(text + f"\npaths: {{nnUNet_preprocessed: {tmp_path / 'pre'}, nnUNet_results: {tmp_path / 'r'}}}\n"
                     .encode())
    return path


@given(mutated())
@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
def test_a_mutated_config_loads_or_is_refused_naming_what_is_wrong(tmp_path: Path, raw: bytes) -> None:
    path = write(tmp_path, raw)
    try:
        RunContext.load(path)
    except ConfigError as exc:
        assert exc.exit_code == 2 and exc.problems and exc.source == str(path.resolve())
        for problem in exc.problems:
            assert ":" in problem  # "<key path or what>: why"


@given(mutated())
@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
def test_the_cli_says_it_in_words_with_exit_2(tmp_path: Path, raw: bytes) -> None:
    path = write(tmp_path, raw)
    result = CliRunner().invoke(main, ["status", str(path)])
    assert result.exit_code in (0, 2), (result.output, result.exception)
    assert "Traceback" not in result.output
    if result.exit_code == 2:
        assert "invalid config" in result.output
