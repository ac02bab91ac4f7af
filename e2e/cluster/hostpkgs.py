"""Debian packages the real node and the image build need, installed with apt-get when missing.

CI starts from a machine without them, so the scripts install them themselves: containerd and
runc (the container runtime), the CNI plugins (bridge, host-local, portmap), iptables,
conntrack and nftables (kube-proxy and its cleanup), umoci and mmdebstrap (images without Docker), gcc (the pause binary).
`apt-get install` does not start services here (policy-rc.d), so nothing runs behind our back.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from pathlib import Path

# A file whose presence proves the package is installed -> the Debian package.
NODE_PACKAGES = {
    "/usr/bin/containerd": "containerd",
    "/usr/sbin/runc": "runc",
    "/usr/lib/cni/bridge": "containernetworking-plugins",
    "/usr/sbin/iptables": "iptables",
    "/usr/sbin/conntrack": "conntrack",
    "/usr/sbin/nft": "nftables",  # to drop the (empty) tables iptables-nft leaves
}
IMAGE_PACKAGES = {
    "/usr/bin/umoci": "umoci",
    "/usr/bin/mmdebstrap": "mmdebstrap",
    "/usr/bin/gcc": "gcc",
    "/usr/include/stdio.h": "libc6-dev",
}
ATTEMPTS = 3


class PackageError(RuntimeError):
    pass


def missing(wanted: dict[str, str]) -> list[str]:
    return sorted({pkg for path, pkg in wanted.items() if not Path(path).exists()})


def ensure(wanted: dict[str, str], say: object = print) -> float:
    """Install the missing packages; return the seconds it took (0 when nothing was missing)."""
    need = missing(wanted)
    if not need:
        return 0.0
    if os.geteuid() != 0:
        raise PackageError(
            f"missing packages {' '.join(need)}: run as root or `sudo apt-get install {' '.join(need)}`"
        )
    if shutil.which("apt-get") is None:
        raise PackageError(f"missing packages {' '.join(need)} and no apt-get to install them")
    started = time.monotonic()
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    last = ""
    for attempt in range(1, ATTEMPTS + 1):
        if callable(say):
            say(f"apt-get install {' '.join(need)} (attempt {attempt})")
        update = subprocess.run(
            ["apt-get", "update", "-qq"], env=env, capture_output=True, text=True, check=False
        )
        install = subprocess.run(
            ["apt-get", "install", "-y", "-qq", "--no-install-recommends", *need],
            env=env,
            capture_output=True,
            text=True,
            check=False,
        )
        if install.returncode == 0 and not missing(wanted):
            return time.monotonic() - started
        last = (update.stderr + install.stderr + install.stdout)[-2000:]
        time.sleep(5 * attempt)
    raise PackageError(f"apt-get could not install {' '.join(need)}:\n{last}")
