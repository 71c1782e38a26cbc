"""Time that lcc's start-up hook adds to every Python start (target: under 10 ms).

    python benchmarks/startup_overhead.py --runs 30

Each run starts a fresh interpreter with ``-S`` (no site processing) and times
``site.addsitedir(<site-packages>)``, which processes every ``.pth`` file there as a normal
start does, once with ``lcc_startup.pth`` and once with that one file skipped. The
difference of the medians is what lcc adds. For scale, the table also gives the median
wall time of a whole ``python -c pass``.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import sysconfig
import time
from pathlib import Path

PTH_NAME = "lcc_startup.pth"
TIMED_SITE_SETUP = """
import site, time
original = site.addpackage
def addpackage(sitedir, name, known_paths):
    if name in {skipped!r}:
        return known_paths
    return original(sitedir, name, known_paths)
site.addpackage = addpackage
started = time.perf_counter()
site.addsitedir({site_packages!r})
print(time.perf_counter() - started)
"""


def time_site_setup(site_packages: str, skipped: set[str]) -> float:
    code = TIMED_SITE_SETUP.format(skipped=skipped, site_packages=site_packages)
    completed = subprocess.run([sys.executable, "-S", "-c", code], capture_output=True, text=True, check=True)
    return float(completed.stdout.strip())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=30, help="interpreter starts per measurement")
    args = parser.parse_args()

    site_packages = sysconfig.get_paths()["purelib"]
    if not (Path(site_packages) / PTH_NAME).is_file():
        sys.exit(f"{PTH_NAME} not found in {site_packages}: install lcc into this interpreter first (pip install .)")

    with_hook, without_hook, whole_start = [], [], []
    for _ in range(args.runs):
        # Interleaved, so that a slow spell of the machine hits both measurements alike.
        with_hook.append(time_site_setup(site_packages, set()))
        without_hook.append(time_site_setup(site_packages, {PTH_NAME}))
        started = time.perf_counter()
        subprocess.run([sys.executable, "-c", "pass"], check=True)
        whole_start.append(time.perf_counter() - started)

    def milliseconds(values: list[float]) -> str:
        return f"{statistics.median(values) * 1000:6.2f} ms"

    added = statistics.median(with_hook) - statistics.median(without_hook)
    print(f"median of {args.runs} runs, {sys.executable}")
    print("| measurement                                 | median    |")
    print(f"| python -c pass, whole start                 | {milliseconds(whole_start)} |")
    print(f"| site-packages .pth processing, with lcc     | {milliseconds(with_hook)} |")
    print(f"| site-packages .pth processing, without lcc  | {milliseconds(without_hook)} |")
    print(f"| added by lcc_startup.pth                    | {added * 1000:6.2f} ms |")


if __name__ == "__main__":
    main()
