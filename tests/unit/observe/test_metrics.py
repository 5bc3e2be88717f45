"""Prometheus metrics: a real HTTP endpoint scraped while the runner supervises, and the textfile format."""

from __future__ import annotations

import socket
import threading
import urllib.request
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from supervisor.daemon.process import wait_until
from supervisor.daemon.runner import Runner
from supervisor.observe.metrics import Metrics
from tests.conftest import fake_spawn, make_ctx


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def samples(text: str) -> dict[str, float]:
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            key = s.name + ("{state=" + s.labels["state"] + "}" if "state" in s.labels else "")
            out[key] = s.value
    return out


def test_a_predictions_quarantined_outputs_and_set_aside_cases_are_counted(tmp_path: Path) -> None:
    prom = tmp_path / "predict.prom"
    m = Metrics("/out", textfile=prom, clock=lambda: 0.0)
    for event in ("output_corrupt", "output_corrupt", "case_failed"):
        m.count(event, {})
    m.close()
    s = samples(prom.read_text())
    assert s["nnunet_supervise_outputs_corrupt_total"] == 2 and s["nnunet_supervise_cases_failed_total"] == 1


@pytest.mark.process
def test_the_endpoint_is_scraped_during_a_run_and_counts_failures(tmp_path: Path) -> None:
    port = free_port()
    ctx = make_ctx(tmp_path, [{"epochs": [0, 3], "outcome": "1"}, {"epochs": [3, 5], "outcome": "hang"}],
                   metrics={"port": port}, heartbeat={"stall_timeout_s": 30.0}, max_restarts=1)
    r = Runner(ctx, spawn=fake_spawn, tick_s=0.05, leftover_grace_s=1.0)
    scraped: list[dict[str, float]] = []

    def scrape_then_stop() -> None:
        def running_again() -> bool:
            try:
                text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2).read().decode()
            except OSError:
                return False
            s = samples(text)
            if s.get("nnunet_supervise_attempt") == 2 and s.get("nnunet_supervise_state{state=running}") == 1:
                scraped.append(s)
                return True
            return False
        wait_until(running_again, 30, 0.1)
        from supervisor.core.messages import StopRequested
        r.queue.put(StopRequested("SIGTERM"))

    threading.Thread(target=scrape_then_stop, daemon=True).start()
    assert r.run() == 75
    assert scraped, "never scraped the second attempt running"
    s = scraped[0]
    assert s["nnunet_supervise_restarts"] == 1 and s["nnunet_supervise_exits_total"] == 1
    assert s["nnunet_supervise_state{state=backoff}"] == 0 and s["nnunet_supervise_stalls_total"] == 0
    with socket.socket() as probe:  # bound to localhost only unless configured otherwise
        assert probe.connect_ex(("127.0.0.1", port)) == 0


def test_the_textfile_is_written_for_node_exporter(tmp_path: Path) -> None:
    clock = [0.0]
    prom = tmp_path / "nnunet.prom"
    m = Metrics("fold_0", textfile=prom, clock=lambda: clock[0])
    m.update("running", 3, 2, 41, 1000, 180.0)
    m.count("stall")
    m.update("running", 3, 2, 42, 1000, 10.0)  # within 15 s: not rewritten yet
    s = samples(prom.read_text())
    assert s["nnunet_supervise_epoch"] == 41 and s["nnunet_supervise_num_epochs"] == 1000
    assert s["nnunet_supervise_last_checkpoint_age_seconds"] == 180.0 and s["nnunet_supervise_stalls_total"] == 0
    m.close()
    s = samples(prom.read_text())
    assert s["nnunet_supervise_epoch"] == 42 and s["nnunet_supervise_stalls_total"] == 1
    assert s["nnunet_supervise_state{state=running}"] == 1 and s["nnunet_supervise_state{state=failed}"] == 0
    assert not list(tmp_path.glob("*.tmp*"))


@pytest.mark.process
def test_a_port_already_taken_fails_check_and_the_run_goes_on_without_the_endpoint(tmp_path: Path) -> None:
    from supervisor.preflight import full_check, port_in_use
    from supervisor.rundir.eventlog import read_events
    from tests.conftest import FakeClock, FakeOps

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = int(taken.getsockname()[1])
        assert port_in_use("127.0.0.1", port) == "Address already in use"
        plan = [{"epochs": [0, 2], "outcome": "finish"}]
        ctx = make_ctx(tmp_path, plan, metrics={"port": port})
        report = full_check(ctx)
        assert any(p.startswith(f"metrics.port: 127.0.0.1:{port} cannot be served (Address already in use)")
                   for p in report.problems)
        runner = Runner(ctx, ops=FakeOps(plan), clock=FakeClock(), tick_s=0.01)
        assert runner.run() == 0  # not 70, which systemd would restart forever
        assert runner.metrics is not None and not runner.metrics.serving
        assert [e["event"] for e in read_events(ctx.layout.events_file)] == ["launch", "exit", "finished"]
