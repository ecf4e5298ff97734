"""Running the JMeter plans of ``loadtest/jmeter/`` (non-GUI) and finding their results.

``command()`` builds ``jmeter -n -t plan -l results.jtl -J…`` with the properties both
plans read (host, port, protocol, rate, ramp, hold, users, chats, run_id) and the
``sample_variables`` that put each ack into the CSV results for ``verify --jtl``.

Debian's ``jmeter`` (2.13) cannot load any plan on a current Debian: its XStream 1.4.20
refuses JMeter 2.13's classes. For JMeter 2.x the command therefore adds a small Java
agent (``jmeter/compat/``, compiled here once with ``javac``) that restores JMeter's own
XStream setup; JMeter >= 5 runs unchanged.
"""

from __future__ import annotations

import math
import os
import shutil
import subprocess
import tempfile
import urllib.parse
import zipfile
from dataclasses import dataclass
from pathlib import Path

from loadtest.jtl import SAMPLE_VARIABLES

PLANS_DIR = Path(__file__).with_name("jmeter")
HTTP_PLAN = PLANS_DIR / "http_plan.jmx"
WS_PLAN = PLANS_DIR / "ws_plan.jmx"
COMPAT_DIR = PLANS_DIR / "compat"
#: Where Debian's package keeps JMeter's own jars (the agent is compiled against XStream).
XSTREAM_JARS = ("/usr/share/java/xstream.jar",)


@dataclass(frozen=True)
class PlanRun:
    target: str
    rate: float
    ramp_s: float
    hold_s: float
    users: int
    chats: int
    run_id: str
    results: Path
    log: Path
    plan: Path = HTTP_PLAN
    prefix: str = "jm"


def jmeter_version(binary: str = "jmeter") -> str:
    # In a scratch directory: JMeter writes jmeter.log into its working directory.
    with tempfile.TemporaryDirectory(prefix="jmeter-version-") as scratch:
        out = subprocess.run(  # noqa: S603 - our own argv
            [binary, "--version"],
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
            cwd=scratch,
        )
    for line in (out.stdout + out.stderr).splitlines():
        if "Version" in line:
            return line.split("Version", 1)[1].strip()
    return ""


def needs_compat_agent(version: str) -> bool:
    return version.startswith("2.")


def build_compat_agent(cache_dir: Path) -> Path:
    """Compile the XStream agent into ``cache_dir/agent.jar`` (once)."""
    jar = cache_dir / "agent.jar"
    sources = [
        COMPAT_DIR / "XStreamPermitAgent.java",
        *sorted((COMPAT_DIR / "src").rglob("*.java")),
    ]
    if jar.exists() and jar.stat().st_mtime >= max(p.stat().st_mtime for p in sources):
        return jar
    javac = shutil.which("javac")
    if javac is None:
        raise RuntimeError("javac is needed once to build the JMeter 2.13 compatibility agent")
    classes = cache_dir / "classes"
    shutil.rmtree(classes, ignore_errors=True)
    classes.mkdir(parents=True)
    classpath = os.pathsep.join(p for p in XSTREAM_JARS if Path(p).exists())
    subprocess.run(  # noqa: S603
        [
            javac,
            "--release",
            "11",
            "-nowarn",
            "-cp",
            classpath,
            "-d",
            str(classes),
            *map(str, sources),
        ],
        check=True,
        capture_output=True,
    )
    wrapper = classes / "org/apache/jmeter/save/SaveService$XStreamWrapper.class"
    with zipfile.ZipFile(jar, "w") as z:
        z.writestr(
            "META-INF/MANIFEST.MF", "Manifest-Version: 1.0\nPremain-Class: XStreamPermitAgent\n"
        )
        for cls in sorted(classes.glob("XStreamPermitAgent*.class")):
            z.write(cls, cls.name)
        # Not a .class name: the agent hands it to JMeter's class loader, nobody else loads it.
        z.write(wrapper, "xstream-wrapper.bin")
    return jar


def command(run: PlanRun, binary: str = "jmeter") -> list[str]:
    url = urllib.parse.urlparse(run.target)
    port = url.port or (443 if url.scheme == "https" else 80)
    props = {
        "host": url.hostname or "127.0.0.1",
        "port": port,
        "protocol": url.scheme or "http",
        "rate": f"{run.rate:g}",
        # The thread group's duration is ramp + hold computed in the plan: whole seconds.
        "ramp": math.ceil(run.ramp_s),
        "hold": math.ceil(run.hold_s),
        "users": run.users,
        "chats": run.chats,
        "run_id": run.run_id,
        "prefix": run.prefix,
        "sample_variables": ",".join(SAMPLE_VARIABLES),
        "jmeter.save.saveservice.output_format": "csv",
        "jmeter.save.saveservice.print_field_names": "true",
    }
    argv = [binary, "-n", "-t", str(run.plan), "-l", str(run.results), "-j", str(run.log)]
    return argv + [f"-J{k}={v}" for k, v in props.items()]


def environment(cache_dir: Path, binary: str = "jmeter") -> dict[str, str]:
    """The environment to run ``binary`` with (the agent for Debian's JMeter 2.13)."""
    env = dict(os.environ)
    if needs_compat_agent(jmeter_version(binary)):
        agent = build_compat_agent(cache_dir)
        # Debian's /usr/bin/jmeter (java-wrappers) passes JAVA_ARGS to the JVM.
        env["JAVA_ARGS"] = f"{env.get('JAVA_ARGS', '')} -javaagent:{agent}".strip()
    return env


def run_plan(
    run: PlanRun, cache_dir: Path, binary: str = "jmeter", timeout: float | None = None
) -> int:
    """Run the plan to completion; returns JMeter's exit code."""
    run.results.parent.mkdir(parents=True, exist_ok=True)
    run.results.unlink(missing_ok=True)  # JMeter appends to an existing file
    env = environment(cache_dir, binary)
    limit = timeout if timeout is not None else run.ramp_s + run.hold_s + 300
    proc = subprocess.run(command(run, binary), env=env, timeout=limit, check=False)  # noqa: S603
    return proc.returncode
