"""The README's scale charts from bench/scale_bench.py's output: one panel per stage, time and peak
memory against documents.

    .venv/bin/python bench/scale_charts.py scale_bench.jsonl docs/img/scale.png
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

STAGES = ("producer", "streaming", "warehouse", "reconcile")


def main() -> None:
    source, target = Path(sys.argv[1]), Path(sys.argv[2])
    rows = [json.loads(line) for line in source.read_text().splitlines() if line.strip()]
    figure, axes = plt.subplots(1, len(STAGES), figsize=(4 * len(STAGES), 3.4))
    for axis, stage in zip(axes, STAGES, strict=True):
        mine = sorted((r for r in rows if r["stage"] == stage), key=lambda r: r["documents"])
        documents = [r["documents"] / 1e6 for r in mine]
        axis.plot(documents, [r["seconds"] for r in mine], "o-", color="tab:blue")
        axis.set_title(stage)
        axis.set_xlabel("documents (millions)")
        axis.set_ylabel("seconds", color="tab:blue")
        memory = axis.twinx()
        rss = [r["peak_rss_mib"] + (r["children_peak_rss_mib"] if stage == "streaming" else 0) for r in mine]
        memory.plot(documents, rss, "s--", color="tab:red")
        jvm = stage == "streaming" and any(r["children_peak_rss_mib"] for r in mine)
        note = " (driver + JVM)" if jvm else " (driver; JVM not sampled)" if stage == "streaming" else ""
        memory.set_ylabel("peak RSS, MiB" + note, color="tab:red")
        memory.set_ylim(bottom=0)
        axis.set_ylim(bottom=0)
    figure.tight_layout()
    figure.savefig(target, dpi=90)
    print(f"wrote {target}")


if __name__ == "__main__":
    main()
