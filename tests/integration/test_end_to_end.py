import re

import pytest

from lakehouse.config import Settings
from lakehouse.run_all import run_all


def test_run_all_reconciles_with_mongodb(settings: Settings, capsys: pytest.CaptureFixture[str]) -> None:
    code = run_all(settings, events=400, rate=None, timeout=300, stop_servers=False)
    out = capsys.readouterr().out
    last = out.strip().splitlines()[-1]
    assert code == 0, out
    match = re.fullmatch(r"reconciled: source=(\d+) warehouse=(\d+) missing=0 extra=0 mismatched=0", last)
    assert match and match.group(1) == match.group(2) and int(match.group(1)) > 0, last
    # Every process run-all started is gone, and the servers are still up for the next command.
    assert not list((settings.state_dir / "run").glob("*.pid"))
    from infra.servers import status

    assert all(" up " in line for line in status(settings)), status(settings)
