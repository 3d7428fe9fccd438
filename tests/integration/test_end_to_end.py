import os
import re
import signal
from pathlib import Path

import pytest

from lakehouse.app.run_all import run_all
from lakehouse.core.config import Settings
from tests.conftest import wait_for
from tests.helpers import start_cli


def test_run_all_reconciles_with_mongodb(settings: Settings, capsys: pytest.CaptureFixture[str]) -> None:
    code = run_all(settings, events=400, rate=None, timeout=300, stop_servers=False)
    out = capsys.readouterr().out
    last = out.strip().splitlines()[-1]
    assert code == 0, out
    match = re.fullmatch(r"reconciled: source=(\d+) warehouse=(\d+) missing=0 extra=0 mismatched=0", last)
    assert match and match.group(1) == match.group(2) and int(match.group(1)) > 0, last
    # One line per captured collection (collections.toml: orders, customers, products) before the total.
    per = {m.group(1): (int(m.group(2)), int(m.group(3))) for m in re.finditer(
        r"^reconciled: collection=(\w+) source=(\d+) warehouse=(\d+) missing=0 extra=0 mismatched=0$", out, re.M)}
    assert set(per) == {"orders", "customers", "products"}, out
    assert all(source == warehouse > 0 for source, warehouse in per.values()), per
    assert sum(source for source, _ in per.values()) == int(match.group(1))
    # Every process run-all started is gone, and the servers are still up for the next command.
    assert not list((settings.state_dir / "run").glob("*.pid"))
    from infra.servers import status

    assert all(" up " in line for line in status(settings)), status(settings)


def test_follow_runs_until_ctrl_c_then_stops_everything_it_started(settings: Settings, tmp_path: Path) -> None:
    """`make run-all FOLLOW=1`: status lines keep coming while changes flow to the warehouse; one
    SIGINT (what Ctrl-C sends) stops the producer and the streaming job, and run-all exits 0."""
    log = tmp_path / "follow.log"
    demo = start_cli(settings, log, "run-all", "--follow", "--every", "2", "--rate", "30")
    try:
        def warehouse_grows_after(line: int) -> bool:
            counts = [int(n.replace(",", "")) for n in re.findall(r"warehouse ([\d,]+) documents",
                                                                   "\n".join(log.read_text().splitlines()[line:]))]
            return len(counts) >= 2 and counts[0] < counts[-1]

        def warehouse_grows() -> bool:
            # The warehouse exists (empty) from the start: it must have documents, and then more.
            counts = [int(n.replace(",", "")) for n in re.findall(r"warehouse ([\d,]+) documents", log.read_text())]
            counts = [n for n in counts if n > 0]
            return len(counts) >= 2 and counts[0] < counts[-1]

        wait_for(lambda: demo.poll() is not None or warehouse_grows(), 240, "the warehouse to grow in follow mode")
        assert demo.poll() is None, log.read_text()
        # A child that dies is started again, with the cause on run-all's output and in the status line.
        producer = int(re.findall(r"started producer \(pid (\d+)", log.read_text())[0])
        os.killpg(producer, signal.SIGKILL)
        wait_for(lambda: "producer restarted 1x" in log.read_text(), 120, "run-all to restart the producer")
        assert re.search(r"producer exited with code -9 .*restarting it", log.read_text()), log.read_text()
        before = log.read_text().count("\n")
        wait_for(lambda: warehouse_grows_after(before), 120, "the warehouse to grow again after the restart")
        demo.send_signal(signal.SIGINT)
        demo.wait(timeout=180)
    finally:
        if demo.poll() is None:
            os.killpg(demo.pid, signal.SIGKILL)
            demo.wait()
    out = log.read_text()
    assert demo.returncode == 0, out
    assert "interrupted: stopping the processes run-all started" in out
    for name in ("producer", "streaming", "monitor"):
        assert f"stopped {name} (exit code 0)" in out, out
    started = re.findall(r"started (\w+) \(pid (\d+)", out)
    assert sorted(name for name, _ in started) == ["monitor", "producer", "producer", "streaming"], out
    children = [int(pid) for _, pid in started]
    wait_for(lambda: not any(_alive(pid) for pid in children), 30, "run-all's children to be gone")
    assert not list((settings.state_dir / "run").glob("*.pid"))


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    stat = Path(f"/proc/{pid}/stat")
    return not (stat.exists() and stat.read_text().split(") ")[-1].startswith("Z"))
