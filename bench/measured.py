"""Run a `lakehouse` command as its own process and report its own peak memory.

The peak is the process's VmHWM, read by the process itself on exit. Not ru_maxrss: Linux carries a
forked parent's peak into the child's ru_maxrss across exec, so a bench that holds a big warehouse when
it starts the command would report its own memory as the command's.
"""

from __future__ import annotations

# `python -c MEASURED <lakehouse args>`: prints PEAK_RSS_KIB <own VmHWM> <children's ru_maxrss> on stderr.
MEASURED = ("import resource, runpy, sys\nsys.argv = ['lakehouse', *sys.argv[1:]]\ntry:\n"
            "    runpy.run_module('lakehouse.app.cli', run_name='__main__')\nfinally:\n"
            "    own = next(int(line.split()[1]) for line in open('/proc/self/status') if line.startswith('VmHWM:'))\n"
            "    print('PEAK_RSS_KIB', own, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss, file=sys.stderr)")


def peaks(stderr: str) -> tuple[int, int]:
    """(own peak, children's peak) in KiB from a MEASURED command's stderr."""
    own, children = stderr.rsplit("PEAK_RSS_KIB", 1)[1].split()[:2]
    return int(own), int(children)
