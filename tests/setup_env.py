"""``make test`` step: install the system packages the tests drive (Chromium, its driver,
JMeter) when they are missing, via apt-get as root. Idempotent and quiet when present."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

#: binary -> Debian package providing it
NEEDED = {"chromium": "chromium", "chromedriver": "chromium-driver", "jmeter": "jmeter"}
#: file -> Debian package providing it (JMeter's HTTP sampler is a separate package)
NEEDED_FILES = {"/usr/share/jmeter/lib/ext/ApacheJMeter_http.jar": "jmeter-http"}


def main() -> int:
    missing = sorted({pkg for binary, pkg in NEEDED.items() if shutil.which(binary) is None})
    missing += sorted({pkg for path, pkg in NEEDED_FILES.items() if not os.path.exists(path)})
    if not missing:
        return 0
    if os.geteuid() != 0 or shutil.which("apt-get") is None:
        print(f"missing system packages: {' '.join(missing)} (install them with apt-get)")
        return 1
    print(f"installing {' '.join(missing)} with apt-get…", flush=True)
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    subprocess.run(["apt-get", "update", "-qq"], check=True, env=env)
    subprocess.run(
        ["apt-get", "install", "-y", "-qq", "--no-install-recommends", *missing],
        check=True,
        env=env,
        stdout=subprocess.DEVNULL,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
