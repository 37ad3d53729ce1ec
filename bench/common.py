"""Helpers shared by the benchmark scripts: machine facts, memory, timing, output.

Nothing here changes the process environment (thread counts, BLAS kernel
variables): the scripts report what they ran under, they do not tune it.
"""

from __future__ import annotations

import datetime
import json
import os
import platform
import resource
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

REPO = Path(__file__).resolve().parent.parent
_PAGE = os.sysconf("SC_PAGE_SIZE")


def rss_bytes() -> int:
    """Resident set size of this process now."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * _PAGE


def peak_rss_bytes() -> int:
    """Peak resident set size of this process so far (ru_maxrss is in KiB on Linux)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def cpu_seconds(pids: list[int]) -> float:
    """User + system CPU time the processes ``pids`` have used so far (from
    /proc/<pid>/stat): server CPU per request is stable on a shared machine
    where QPS and latency are not."""
    ticks = os.sysconf("SC_CLK_TCK")
    total = 0
    for pid in pids:
        # The command name (field 2) may hold spaces; the fields after its ")" are fixed.
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        total += int(fields[11]) + int(fields[12])  # utime, stime (fields 14 and 15 of stat)
    return total / ticks


def rss_mb(pid: int) -> dict[str, float]:
    """Resident and peak memory, and the major page faults so far: pages the
    kernel had dropped (file-backed code and data; see BENCHMARKS.md on DAMON)
    read back from disk, each a stall of whatever thread touched them."""
    fields = dict(line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines())
    major_faults = int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[9])
    return {"rss_mb": round(int(fields["VmRSS"].split()[0]) / 1024, 1),
            "peak_rss_mb": round(int(fields["VmHWM"].split()[0]) / 1024, 1), "major_faults": major_faults}


def dir_bytes(path: str | os.PathLike) -> int:
    """Total size of the regular files under ``path`` (or of ``path`` itself)."""
    p = Path(path)
    if p.is_file():
        return p.stat().st_size
    return sum(f.stat().st_size for f in p.rglob("*") if f.is_file())


def mib(n: float) -> float:
    return round(n / (1 << 20), 1)


def blas_info() -> list[dict[str, Any]]:
    """Which BLAS/OpenMP libraries numpy (and whatever else is loaded) uses,
    with the kernel architecture OpenBLAS picked; [] without threadpoolctl."""
    try:
        import threadpoolctl
    except ImportError:
        return [{"note": "threadpoolctl not installed: kernel unknown"}]
    keep = ("user_api", "internal_api", "num_threads", "version", "architecture", "threading_layer", "filepath")
    return [{k: v for k, v in lib.items() if k in keep} for lib in threadpoolctl.threadpool_info()]


def git_commit() -> str:
    try:
        out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True,
                             text=True, timeout=10)
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=REPO,
                               capture_output=True, text=True, timeout=10).stdout.strip()
        return out.stdout.strip() + ("+dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def machine_info() -> dict[str, Any]:
    """Facts to print next to every result: absolute times on a shared 2-core
    machine drift, so the load average at start is recorded too."""
    try:
        mem_total = int(next(l for l in Path("/proc/meminfo").read_text().splitlines()
                             if l.startswith("MemTotal")).split()[1]) * 1024
    except (OSError, StopIteration):
        mem_total = 0
    return {
        "date_utc": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "cpu": cpu_model(),
        "cores": os.cpu_count(),
        "memory_gib": round(mem_total / (1 << 30), 1),
        "load_average_at_start": [round(x, 2) for x in os.getloadavg()],
        "python": platform.python_version(),
        "git_commit": git_commit(),
        "env": {k: os.environ[k] for k in ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE", "OMP_NUM_THREADS",
                                            "OPENBLAS_NUM_THREADS", "OMP_WAIT_POLICY") if k in os.environ},
    }


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def write_json(obj: Any, path: str | os.PathLike | None) -> str:
    text = json.dumps(obj, indent=2, sort_keys=False, default=_default)
    if path:
        Path(path).write_text(text + "\n")
    return text


def _default(value: Any) -> Any:
    try:
        import numpy as np
        if isinstance(value, np.generic):
            return value.item()
        if isinstance(value, np.ndarray):
            return value.tolist()
    except ImportError:
        pass
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"{type(value).__name__} is not JSON serializable")


class ChildFailed(RuntimeError):
    """A child process exited non-zero; ``str()`` is one line, ``stderr`` its tail."""

    def __init__(self, message: str, stderr: str):
        super().__init__(message)
        self.stderr = stderr


def run_child(module: str, args: list[str], timeout_s: float | None = None) -> dict[str, Any]:
    """Runs ``python -m module args`` from the repository root and parses the
    last line of its stdout as JSON (children print exactly one JSON line)."""
    cmd = [sys.executable, "-m", module, *args]
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=timeout_s)
    if proc.returncode != 0:
        why = " (SIGKILL: most likely the kernel's OOM killer, see dmesg)" if proc.returncode == -9 else ""
        raise ChildFailed(f"{module} {args[:2]} exited {proc.returncode}{why}", proc.stderr[-4000:])
    lines = [l for l in proc.stdout.splitlines() if l.strip()]
    if not lines:
        raise RuntimeError(f"{' '.join(cmd)} printed nothing:\n{proc.stderr[-4000:]}")
    return json.loads(lines[-1])


def loadtest_report(out: Path, returncode: int, stderr: str) -> dict[str, Any]:
    """The report a ``recsys-loadtest`` run wrote to ``out`` (which its caller removed before the run, so that an
    earlier run's is never read); RuntimeError with the run's stderr if it wrote none."""
    if not out.exists():
        raise RuntimeError(f"recsys-loadtest wrote no report (exit {returncode}):\n{stderr[-2000:]}")
    return json.loads(out.read_text())


def counter_totals(port: int, prefix: str) -> dict[str, float]:
    """Each counter named ``prefix``... (without ``_total``) on a service's /metrics at ``port``, its samples
    summed, read in one scrape so that they are of one moment."""
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()
    return {family.name: sum(sample.value for sample in family.samples if sample.name == f"{family.name}_total")
            for family in text_string_to_metric_families(text) if family.name.startswith(prefix)}


def table(rows: list[list[Any]], header: list[str]) -> str:
    cells = [[str(c) for c in header]] + [[("" if c is None else str(c)) for c in r] for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(header))]
    out = []
    for j, r in enumerate(cells):
        out.append("  ".join(c.rjust(w) if i else c.ljust(w) for i, (c, w) in enumerate(zip(r, widths))))
        if j == 0:
            out.append("  ".join("-" * w for w in widths))
    return "\n".join(out)
