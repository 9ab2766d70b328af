"""Where a run came from: ``environment.json`` in every run folder.

Written when the run starts (``ended`` null) and again when it ends, atomically. It names the
cnnbench version, the git commit of the checkout the package was imported from and whether
that checkout had uncommitted changes (``git_dirty``), Python / torch / torchvision / CUDA /
cuDNN versions, the device and its name, the host, the command line, and the start and end
times. A resumed run starts a new session: the earlier ones move, in order, to ``earlier``.
``cnnbench runs --compare`` lists the fields that differ (``runs.PROVENANCE``: not the times).
"""

from __future__ import annotations

import json
import platform
import shlex
import socket
import subprocess
import sys
import time
from pathlib import Path

import torch

from cnnbench import __version__
from cnnbench.files import RunLayout, write_text
from cnnbench.training.runs import read_environment


def git_state(folder: Path) -> tuple[str | None, bool | None]:
    """The commit and dirty flag of the git checkout holding ``folder``; (None, None) when it
    is none (an installed package) or git is missing."""
    def git(*args):
        return subprocess.run(["git", "-C", str(folder), *args], capture_output=True, text=True,
                              timeout=10, check=True).stdout.strip()

    try:
        commit = git("rev-parse", "HEAD")
        dirty = bool(git("status", "--porcelain", "--untracked-files=no"))
    except (OSError, subprocess.SubprocessError):
        return None, None
    return commit, dirty


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return platform.processor() or platform.machine() or device.type


def environment(device: torch.device) -> dict:
    """This process's facts (``ended`` left null). torchvision's version is read from its
    installed metadata: a run that does not use torchvision does not import it."""
    commit, dirty = git_state(Path(__file__).resolve().parent)
    return {
        "cnnbench": __version__, "git_commit": commit, "git_dirty": dirty,
        "python": platform.python_version(), "torch": torch.__version__,
        "torchvision": _version("torchvision"), "cuda": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None,
        "device": str(device), "device_name": device_name(device),
        "host": socket.gethostname(), "command": shlex.join(sys.argv),
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "ended": None,
    }


def _version(package: str) -> str | None:
    """``package.__version__`` as the package says it (torchvision's ``0.29.1+cu130``, where its
    metadata says ``0.29.1``), read from its ``version.py`` without importing the package."""
    import importlib.util
    import re
    from importlib import metadata

    module = sys.modules.get(package)
    if module is not None:
        return getattr(module, "__version__", None)
    spec = importlib.util.find_spec(package)
    if spec is None:
        return None
    try:
        text = (Path(spec.origin).parent / "version.py").read_text()
        return re.search(r"^__version__\s*=\s*['\"]([^'\"]+)", text, re.M).group(1)
    except (OSError, TypeError, AttributeError):
        try:
            return metadata.version(package)
        except metadata.PackageNotFoundError:
            return None


def start(run_dir: Path, device: torch.device) -> dict:
    """Record this session's start; a resumed run's earlier sessions go under ``earlier``."""
    old = read_environment(run_dir)
    earlier = old.pop("earlier", [])
    record = {**environment(device), "earlier": [*earlier, old] if old else earlier}
    write_text(RunLayout(run_dir).environment, json.dumps(record, indent=2) + "\n")
    return record


def finish(run_dir: Path, record: dict) -> None:
    record["ended"] = time.strftime("%Y-%m-%dT%H:%M:%S%z")
    write_text(RunLayout(run_dir).environment, json.dumps(record, indent=2) + "\n")
