"""This process's resident set size (RSS): now, at its peak so far, and starting a new peak."""

from __future__ import annotations

import sys


def _status(field: str) -> int | None:
    """A size from /proc/self/status (``VmRSS``, ``VmHWM``) in bytes; None off Linux."""
    try:
        with open("/proc/self/status", encoding="ascii") as status:
            for line in status:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass  # not Linux
    return None


def rss() -> int | None:
    """The RSS now, in bytes (``VmRSS``); None where /proc is not there to read it."""
    return _status("VmRSS")


def peak_rss() -> int:
    """The peak RSS so far, in bytes.

    On Linux it is ``VmHWM``, not ``ru_maxrss``: the kernel carries ``ru_maxrss`` across
    exec, so a child of a big bench process would start with its parent's peak and show
    no growth at all; and ``VmHWM`` can be reset (`reset_peak`).
    """
    peak = _status("VmHWM")
    if peak is not None:
        return peak
    import resource  # Unix only; imported here so that the rest of the bench runs anywhere

    maxrss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    # macOS reports bytes, the other Unixes kilobytes.
    return maxrss if sys.platform == "darwin" else maxrss * 1024


def reset_peak() -> bool:
    """Make the peak RSS the RSS now (Linux >= 4.0); False where that cannot be done.

    Without it the peak would stay at whatever importing the bench once took, and a burst
    that grows the RSS less than that would show no growth.
    """
    try:
        with open("/proc/self/clear_refs", "w", encoding="ascii") as clear_refs:
            clear_refs.write("5")
    except OSError:
        return False
    return True
