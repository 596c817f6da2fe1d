"""What a producer pays to install and import spotify-events, per extra.

Builds the wheel from this tree, installs it into fresh venvs (core, ``[collector]``,
``[tools]``), and prints a Markdown table: installed size per distribution (the
bytes each one's RECORD lists, bytecode included) and the wall time ``import
spotify_events`` adds to a fresh interpreter (median over ``--runs``), plus the
share of import time spent in modules only sqlite-utils brings in.

    python benchmarks/install_footprint.py [--runs 21]

Needs pip able to reach an index (it installs the dependencies). Figures in
benchmarks/RESULTS.md ("Install footprint").
"""

from __future__ import annotations

import argparse
import csv
import statistics
import subprocess
import sys
import tempfile
import time
import venv
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
VARIANTS = {"core": "", "collector": "[collector]", "tools": "[tools]"}
#: What the SDK needs at import besides sqlite-utils: a module loaded by
#: ``import sqlite_utils`` after these is one only sqlite-utils brings in.
BASELINE_IMPORTS = "requests, fastavro, backoff, sqlite3, json, logging, threading, dataclasses"


def build_wheel(out: Path) -> Path:
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", str(out), str(ROOT)],
        check=True,
    )
    return next(out.glob("spotify_events-*.whl"))


def install(wheel: Path, extra: str, target: Path) -> Path:
    venv.create(target, with_pip=False)
    python = target / "bin" / "python"
    subprocess.run(
        [sys.executable, "-m", "pip", "--python", str(python), "install", "-q", f"{wheel}{extra}"],
        check=True,
    )
    return python


def sizes(env: Path) -> dict[str, int]:
    site = next(env.glob("lib/python3*/site-packages"))
    result: dict[str, int] = {}
    for record in site.glob("*.dist-info/RECORD"):
        with record.open(newline="") as rows:
            files = (site / row[0] for row in csv.reader(rows) if row)
            result[record.parent.name.split("-")[0]] = sum(
                f.stat().st_size for f in files if f.is_file()
            )
    return result


def import_ms(python: Path, runs: int) -> float:
    """Median wall time ``import spotify_events`` adds to a bare interpreter start."""
    bare, full = [], []
    for _ in range(runs):
        for argv, into in ((["-c", "pass"], bare), (["-c", "import spotify_events"], full)):
            started = time.perf_counter()
            subprocess.run([str(python), *argv], check=True)
            into.append(time.perf_counter() - started)
    return (statistics.median(full) - statistics.median(bare)) * 1000


def sqlite_utils_share(python: Path, runs: int) -> float:
    """Median share of ``-X importtime`` self time spent in modules only sqlite-utils loads."""
    probe = (
        f"import sys; import {BASELINE_IMPORTS}; before = set(sys.modules); import sqlite_utils; "
        "print(' '.join(sorted(set(sys.modules) - before)))"
    )
    only = set(
        subprocess.run([str(python), "-c", probe], capture_output=True, text=True).stdout.split()
    )
    shares = []
    for _ in range(runs):
        err = subprocess.run(
            [str(python), "-X", "importtime", "-c", "import spotify_events"],
            capture_output=True,
            text=True,
        ).stderr
        total = mine = 0
        for line in err.splitlines():
            if line.startswith("import time:") and "self [us]" not in line:
                self_us, _, name = line.removeprefix("import time:").split("|")
                total += int(self_us)
                mine += int(self_us) if name.strip() in only else 0
        shares.append(mine / total)
    return statistics.median(shares)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=21, help="fresh interpreters per figure")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="spotify-events-footprint-") as tmp:
        wheel = build_wheel(Path(tmp) / "dist")
        print("| install | size | distributions | `import spotify_events` adds |")
        print("| --- | --- | --- | --- |")
        per_dist: dict[str, dict[str, int]] = {}
        for variant, extra in VARIANTS.items():
            env = Path(tmp) / variant
            python = install(wheel, extra, env)
            per_dist[variant] = sizes(env)
            total = sum(per_dist[variant].values())
            print(
                f"| {variant} | {total / 2**20:.1f} MiB | {len(per_dist[variant])} "
                f"| {import_ms(python, args.runs):.0f} ms |"
            )
        share = sqlite_utils_share(Path(tmp) / "core" / "bin" / "python", args.runs)
        print(f"\nshare of import time in modules only sqlite-utils loads: {share:.0%}")
        print("\n| distribution (core) | MiB |\n| --- | --- |")
        for name, size in sorted(per_dist["core"].items(), key=lambda kv: -kv[1]):
            print(f"| {name} | {size / 2**20:.2f} |")


if __name__ == "__main__":
    main()
