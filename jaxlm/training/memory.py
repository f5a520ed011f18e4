"""Will the compiled train step fit? XLA's memory analysis against the device's memory.

Needed per device = arguments + outputs - donated (aliased) buffers + temporaries + code,
from `compiled.memory_analysis()`. Available = the allocator's bytes_limit on GPU/TPU; on
CPU the machine's physical memory shared by the local (possibly fake) devices. A run that
does not fit stops before its first step with both numbers and the bindings that drive them,
instead of dying inside XLA with RESOURCE_EXHAUSTED.
"""
from __future__ import annotations

import os
from typing import Optional, Tuple


GiB = 1024 ** 3


class DoesNotFit(ValueError):
  """The train step's memory estimate exceeds the device's memory."""


def needed_bytes(compiled) -> Optional[int]:
  """Bytes one device needs to run `compiled`, or None if XLA reports no analysis."""
  m = compiled.memory_analysis()
  if m is None:
    return None
  return int(m.argument_size_in_bytes + m.output_size_in_bytes - m.alias_size_in_bytes
             + m.temp_size_in_bytes + m.generated_code_size_in_bytes)


def available_bytes(mesh) -> Tuple[Optional[int], str]:
  """(bytes per device, where the number comes from)."""
  device = mesh.local_devices[0]
  stats = device.memory_stats() if hasattr(device, "memory_stats") else None
  if stats and stats.get("bytes_limit"):
    return int(stats["bytes_limit"]), f"{device.device_kind} bytes_limit"
  try:
    total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
  except (ValueError, OSError, AttributeError):
    return None, "unknown"
  shared = len(mesh.local_devices)
  return total // shared, f"host memory / {shared} local device(s)"


def check_fits(compiled, mesh, hint: str = "", limit_bytes: Optional[int] = None) -> Optional[int]:
  """Raises DoesNotFit naming the estimate, the memory and `hint` (the bindings that drive
  it); returns the estimate. limit_bytes overrides the device's memory."""
  needed = needed_bytes(compiled)
  if limit_bytes is not None:
    available, source = int(limit_bytes), "train.memory_limit_bytes"
  else:
    available, source = available_bytes(mesh)
  if needed is not None and available is not None and needed > available:
    raise DoesNotFit(f"the train step needs {needed / GiB:.2f} GiB per device but {source} is "
                     f"{available / GiB:.2f} GiB; {hint}".rstrip("; "))
  return needed
