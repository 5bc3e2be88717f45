"""bundle: what goes into the archive, from run files the tests write; the first real traceback; $HOME as ~."""

from __future__ import annotations

import json
import tarfile
from pathlib import Path

from supervisor.config import read_document
from supervisor.layout import PredictLayout
from supervisor.observe import bundle as b
from tests.conftest import make_ctx

WORKER = """\
2026-12-02 10:00:00.000000: Epoch 3
Process Process-3:
Traceback (most recent call last):
  File "/usr/lib/python3.11/multiprocessing/process.py", line 314, in _bootstrap
    self.run()
  File "{home}/venv/site-packages/batchgenerators/dataloading/nondet_multi_threaded_augmenter.py", line 41, in producer
    item = next(data_loader)
           ^^^^^^^^^^^^^^^^^
ValueError: could not broadcast input array from shape (1,40,56,40) into shape (1,40,56,39)
"""
GENERIC = """\
Exception in thread Thread-5 (results_loop):
Traceback (most recent call last):
  File "/usr/lib/python3.11/threading.py", line 1045, in _bootstrap_inner
    self.run()
  File "{home}/venv/site-packages/batchgenerators/dataloading/nondet_multi_threaded_augmenter.py", line 103, in x
    raise RuntimeError("One or more background workers are no longer alive. Exiting. Please check the "
RuntimeError: One or more background workers are no longer alive. Exiting. Please check the print statements above
"""


def members(path: Path) -> dict[str, str]:
    with tarfile.open(path, "r:gz") as tar:
        out = {}
        for m in tar.getmembers():
            f = tar.extractfile(m)
            assert f is not None and m.name.startswith(b.TOP + "/") and m.uname == ""
            out[m.name[len(b.TOP) + 1:]] = f.read().decode()
        return out


def run_files(tmp_path: Path) -> tuple[Path, Path]:
    """A fold's run directory as a supervisor leaves it after two attempts; returns (config, supervisor dir)."""
    ctx = make_ctx(tmp_path, [])
    sup = ctx.layout.supervisor_dir
    sup.mkdir(parents=True)
    home = str(tmp_path)
    (sup / "state.json").write_text(json.dumps({"state": "running", "attempt": 2, "run_dir": str(sup)}))
    (sup / "events.jsonl").write_text(
        json.dumps({"ts": 1.0, "event": "launch", "attempt": 1, "argv": ["nnUNetv2_train", f"{home}/x"]}) + "\n"
        + json.dumps({"ts": 2.0, "event": "exit", "attempt": 1, "classification": "dead_workers"}) + "\n"
        + '{"ts": 3.0, "event": "lau')  # a torn last line
    noise = "".join(f"2026-12-02 09:59:{i % 60:02d}.000000: line {i}\n" for i in range(500))
    (sup / "attempt-1.log").write_text(noise + WORKER.format(home=home) + "\n" + GENERIC.format(home=home))
    (sup / "attempt-2.log").write_text(GENERIC.format(home=home))
    (ctx.layout.fold_dir / "training_log_2026_12_2_10_00_00.txt").write_text("Epoch 1\ntrain_loss -0.5\n")
    return ctx.config_path, sup


def test_a_fold_bundle_has_each_file_and_the_first_real_traceback(tmp_path: Path) -> None:
    config, _ = run_files(tmp_path)
    sources, notes = b.config_sources(config, read_document(config))
    assert [s.name for s in sources] == ["fold_0"] and notes == []
    out = tmp_path / "out" / "bundle.tar.gz"
    readme = b.write_bundle(out, config, sources, {"ok": True, "path": str(tmp_path / "x")}, "doctor says hi",
                            home=str(tmp_path))
    got = members(out)
    assert set(got) == {"config/run.yaml", "doctor.json", "doctor.txt", "fold_0/state.json", "fold_0/events.jsonl",
                        "fold_0/attempt-1.log.tail", "fold_0/attempt-1.log.traceback.txt",
                        "fold_0/attempt-2.log.tail", "fold_0/attempt-2.log.traceback.txt",
                        "fold_0/training_log_2026_12_2_10_00_00.txt.tail", "README.txt"}
    real = got["fold_0/attempt-1.log.traceback.txt"]
    assert "ValueError: could not broadcast" in real and "Process Process-3:" in real
    assert "RuntimeError: One or more background workers" not in real.split("\n\n", 1)[1]  # named in the header only
    only_generic = got["fold_0/attempt-2.log.traceback.txt"]
    assert "Only a generic traceback" in only_generic and "Exception in thread Thread-5" in only_generic
    tail = got["fold_0/attempt-1.log.tail"].splitlines()
    assert len(tail) == b.TAIL_LINES and tail[-1].startswith("RuntimeError: One or more")
    assert "1 line(s) not valid JSON" in got["README.txt"]
    assert json.loads(got["doctor.json"]) == {"ok": True, "path": "~/x"}
    for name, text in got.items():  # $HOME nowhere, ~ in its place
        assert str(tmp_path) not in text, name
    assert "~/venv/site-packages" in real and '"run_dir": "~/res/' in got["fold_0/state.json"]
    assert readme[0].startswith("nnunet-supervise bundle") and any("attempt-1.log.traceback.txt" in r for r in readme)
    assert "Missing or damaged" not in got["README.txt"]


def test_a_damaged_state_json_and_a_missing_events_file_are_lines_in_the_readme(tmp_path: Path) -> None:
    config, sup = run_files(tmp_path)
    (sup / "state.json").write_bytes(b'{"state": "runn\x00\x00')
    (sup / "events.jsonl").unlink()
    (sup / "attempt-3.log").mkdir()  # not a file at all
    sources, _ = b.config_sources(config, read_document(config))
    out = tmp_path / "bundle.tar.gz"
    b.write_bundle(out, config, sources, None, None, home=str(tmp_path))
    got = members(out)
    readme = got["README.txt"]
    assert "fold_0/state.json" in got and "NOT valid JSON" in readme
    assert "Missing or damaged:" in readme
    assert "state.json: damaged, not valid JSON" in readme and "events.jsonl: missing" in readme
    assert "attempt-3.log: not a regular file" in readme
    assert "fold_0/events.jsonl" not in got and "doctor.json" not in got
    assert str(tmp_path) not in readme and "~/res/" in readme


def test_a_missing_run_directory_and_an_unresolvable_config(tmp_path: Path) -> None:
    bad = tmp_path / "run.yaml"
    bad.write_text("nnunet: {dataset: 4, configuration: 3d_fullres}\npaths: {nnUNet_preprocessed: pre, "
                   "nnUNet_results: res}\n")
    sources, notes = b.config_sources(bad, read_document(bad))
    assert sources == [] and "could not be resolved" in notes[0]  # no Dataset004 folder
    out = tmp_path / "b.tar.gz"
    b.write_bundle(out, bad, [b.Source("fold_0", tmp_path / "nowhere")], None, None, home=str(tmp_path),
                   notes=notes)
    readme = members(out)["README.txt"]
    assert "could not be resolved" in readme and "~/nowhere: missing (no run directory" in readme


def test_an_experiment_and_a_prediction_with_parts(tmp_path: Path) -> None:
    root = tmp_path / "res" / "Dataset901_Tiny" / "nnunet-supervise__exp"
    (root / "folds").mkdir(parents=True)
    (root / "state.json").write_text('{"state": "running"}')
    (root / "events.jsonl").write_text('{"ts": 1, "event": "experiment_started"}\n')
    (root / "folds" / "2d__fold_0.log").write_text("fold supervisor says hi\n")
    (root / "find_best.log").write_text(GENERIC.format(home=tmp_path))
    pred = PredictLayout(tmp_path / "preds")
    for d in (pred.supervisor_dir, pred.supervisor_dir / "part-0-of-2", pred.supervisor_dir / "models" / "m" /
              "supervisor"):
        d.mkdir(parents=True)
        (d / "state.json").write_text("{}")
        (d / "events.jsonl").write_text("")
        (d / "attempt-1.log").write_text(WORKER.format(home=tmp_path))
    sources = [b.experiment_source(root), *b.prediction_sources("prediction", pred)]
    assert [s.name for s in sources] == ["experiment", "prediction", "prediction/part-0-of-2", "prediction/models/m"]
    out = tmp_path / "e.tar.gz"
    b.write_bundle(out, None, sources, None, None, home=str(tmp_path))
    got = members(out)
    assert "experiment/2d__fold_0.log.tail" in got and "experiment/find_best.log.traceback.txt" in got
    assert "ValueError" in got["prediction/part-0-of-2/attempt-1.log.traceback.txt"]
    assert "prediction/models/m/state.json" in got


def test_tracebacks_chained_and_interleaved() -> None:
    log = """\
multiprocessing.pool.RemoteTraceback:
\"\"\"
Traceback (most recent call last):
  File "/x/pool.py", line 125, in worker
    result = (True, func(*args, **kwds))
RuntimeError: Error while creating the NDArray
\"\"\"

The above exception was the direct cause of the following exception:

Traceback (most recent call last):
  File "/x/plan.py", line 1, in <module>
    main()
RuntimeError: Error while creating the NDArray
Traceback (most recent call last):
  File "/x/a.py", line 2, in f
KeyboardInterrupt
""".splitlines()
    found = list(b.tracebacks(log))
    ndarray = "RuntimeError: Error while creating the NDArray"
    assert [t.exception for t in found] == [ndarray, ndarray, "KeyboardInterrupt"]
    assert found[0].line_number == 3 and found[2].generic and not found[0].generic
    real, generic = b.first_real_traceback(["Traceback (most recent call last):", '  File "a", line 1',
                                            "RuntimeError: Some background worker is 6 feet under. Yuck.",
                                            "OK jokes aside.", "", *log])
    assert real is not None and real.line_number == 8  # the first non-generic one, after the generic one
    assert generic is not None and generic.lines[-1] == "OK jokes aside."  # a message over several lines
    assert b.first_real_traceback(["no traceback here"]) == (None, None)


def test_home_is_shortened_only_at_path_boundaries_and_secrets_are_blanked() -> None:
    assert b.shorten_home("/home/me /home/me/x '/home/me' /home/meow", "/home/me") == "~ ~/x '~' /home/meow"
    assert b.shorten_home("/anything", "/") == "/anything" and b.shorten_home("/x", None) == "/x"
    assert b.redact("https://user:pw@host/x fine https://github.com/a") == "https://<redacted>@host/x fine " \
                                                                          "https://github.com/a"
    cfg = "notify:\n  urls: [slack://TokenA/TokenB/TokenC]\nnnunet:\n  env: {WANDB_API_KEY: abc}\n  env2:\n" \
          "    MY_TOKEN: xyz\n"
    red = b.redact(cfg, config=True)
    assert "TokenA" not in red and "slack://<redacted>" in red and "xyz" not in red and "MY_TOKEN: <redacted>" in red


def test_log_tail_reads_only_the_end_and_cuts_long_lines(tmp_path: Path) -> None:
    log = tmp_path / "a.log"
    log.write_text("x" * 10_000 + "\n" + "".join(f"line {i}\n" for i in range(50)) + "bar 10%\rbar 100%\n")
    rows, size = b.read_tail_lines(log, lines=3, cap=200)
    assert rows == ["line 48", "line 49", "bar 100%"] and size == log.stat().st_size
    rows, _ = b.read_tail_lines(log, lines=100)
    assert rows[0].endswith(" [...]") and len(rows[0]) == b.LINE_CAP + 6


def test_the_output_is_written_whole_or_not_at_all(tmp_path: Path) -> None:
    out = tmp_path / "b.tar.gz"
    out.write_text("old")
    (tmp_path / "c.yaml").write_text("x: 1\n")
    b.write_bundle(out, tmp_path / "c.yaml", [], None, None, home="/nonexistent-home")
    assert set(members(out)) == {"config/c.yaml", "README.txt"}
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no temporary left behind
