"""Start-up cost: import time of the CLI module and wall time of `appliance --help`."""

from __future__ import annotations

import re
import subprocess
import sys
import time
from pathlib import Path

from bench.report import median, percentile, table

RUNS = 20
APPLIANCE = Path(sys.executable).with_name("appliance")


def import_time_us() -> int:
    """Cumulative microseconds of `import appliance.cli`, from python -X importtime."""
    result = subprocess.run(
        [sys.executable, "-X", "importtime", "-c", "import appliance.cli"],
        capture_output=True,
        text=True,
        check=True,
    )
    for line in result.stderr.splitlines():
        match = re.match(r"import time:\s+\d+ \|\s+(\d+) \|\s*appliance\.cli$", line)
        if match:
            return int(match.group(1))
    raise RuntimeError("appliance.cli not in the importtime output")


def wall_ms(*command: str) -> float:
    start = time.perf_counter()
    subprocess.run(command, capture_output=True, check=True)
    return (time.perf_counter() - start) * 1000


def main() -> None:
    imports = [import_time_us() / 1000 for _ in range(RUNS)]
    helps = [wall_ms(str(APPLIANCE), "--help") for _ in range(RUNS)]
    bare = [wall_ms(sys.executable, "-c", "pass") for _ in range(RUNS)]
    table(
        f"Start-up (median and p95 of {RUNS} runs, ms)",
        ["figure", "median", "p95"],
        [
            [
                "python -X importtime: import appliance.cli",
                median(imports),
                percentile(imports, 0.95),
            ],
            ["appliance --help, wall", median(helps), percentile(helps, 0.95)],
            ["python -c pass, wall (for scale)", median(bare), percentile(bare, 0.95)],
        ],
    )


if __name__ == "__main__":
    main()
