"""Which device a command runs on: ``auto`` or an explicit name, checked before any work."""

from __future__ import annotations

import torch

from cnnbench.errors import CnnbenchError


def resolve_device(name: str, allow_mps: bool = True) -> torch.device:
    """``auto`` picks CUDA, then MPS, then CPU; asking for an absent device is an error."""
    mps = getattr(torch.backends, "mps", None)
    has_mps = bool(allow_mps and mps and mps.is_available())
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "mps" if has_mps else "cpu"
    if name.split(":")[0] == "cuda" and not torch.cuda.is_available():
        built = ("this torch has no CUDA support" if torch.version.cuda is None
                 else "no GPU is visible")
        raise CnnbenchError(f"--device cuda asked for, but {built}; use --device cpu or auto")
    choices = ("cpu", "cuda", "mps") if allow_mps else ("cpu", "cuda")
    if name.split(":")[0] not in choices:
        raise CnnbenchError(f"unknown device {name!r} here: use auto or {', '.join(choices)}")
    if name == "mps" and not has_mps:
        raise CnnbenchError("--device mps asked for, but Apple's MPS is not available here; "
                            "use --device cpu or auto")
    return torch.device(name)


def device_name(device: torch.device) -> str:
    """The GPU's name on CUDA; on the CPU its model (Linux's /proc/cpuinfo), else the platform's
    processor or machine type."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    if device.type == "cpu":
        try:
            with open("/proc/cpuinfo") as info:
                for line in info:
                    if line.startswith("model name"):
                        return line.split(":", 1)[1].strip()
        except OSError:
            pass
        import platform

        return platform.processor() or platform.machine() or "cpu"
    return device.type
