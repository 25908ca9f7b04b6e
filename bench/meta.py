"""Where a result was measured: timestamp, git commit, machine, and how the run was set up."""

from __future__ import annotations

import os
import platform
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parent.parent


def git_commit() -> str | None:
    """The checked-out commit (suffixed ``-dirty`` with local changes), None outside git."""
    try:
        run = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=REPO_ROOT, capture_output=True, text=True, timeout=5
        )
        if run.returncode != 0:
            return None
        commit = run.stdout.strip()
        status = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=REPO_ROOT,
            capture_output=True,
            text=True,
            timeout=5,
        )
        return commit + "-dirty" if status.stdout.strip() else commit
    except (OSError, subprocess.SubprocessError):
        return None


def cpu_model() -> str | None:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or None


def machine_info() -> dict[str, Any]:
    affinity = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None
    return {
        "platform": platform.platform(),
        "python": sys.version.split()[0],
        "implementation": platform.python_implementation(),
        "cpu_count": os.cpu_count(),
        "cpu_model": cpu_model(),
        "cpus_allowed": affinity,
    }


def now_stamp() -> tuple[str, str]:
    """(ISO-8601 UTC time, file-name-safe stamp) of the current moment."""
    moment = datetime.now(UTC)
    return moment.isoformat(timespec="seconds"), moment.strftime("%Y%m%dT%H%M%SZ")


def envelope(kind: str) -> dict[str, Any]:
    """The fields every result file starts with."""
    iso, _ = now_stamp()
    return {"kind": kind, "timestamp": iso, "git_commit": git_commit(), "machine": machine_info()}
