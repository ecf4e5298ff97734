"""Each Dockerfile's build context and entry point, checked without a Docker engine.

The base image's COPY sources are staged into a temporary build context exactly as
.dockerignore lets Docker see them; the wheel is built from that context and installed
with the locked runtime requirements exported the way the Dockerfile exports them;
then each service Dockerfile's CMD runs (with ``--help``) in that environment.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from infra.catalog import CATALOG, STATE_DIR
from infra.components.data import CA_BUNDLE
from infra.tools.ecr import BASE_DOCKERFILE, DOCKERFILES

ROOT = Path(__file__).resolve().parents[2]
EXPORT = "uv export --frozen --no-dev --no-group infra --no-emit-project --format requirements-txt"


def uv() -> str:
    """The uv `make install` uses (.tools/bin/uv), else the one on PATH."""
    local = ROOT / ".tools" / "bin" / "uv"
    found = str(local) if local.exists() else shutil.which("uv")
    assert found, "uv not found: run `make install`"
    return found


def instructions(dockerfile: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs with continuation lines joined and comments dropped."""
    text = re.sub(r"\\\n", " ", dockerfile.read_text())
    pairs = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            word, _, rest = line.partition(" ")
            pairs.append((word.upper(), rest.strip()))
    return pairs


def exec_form(arguments: str) -> list[str]:
    """The JSON array of an exec-form CMD/HEALTHCHECK CMD."""
    parsed = json.loads(arguments)
    assert isinstance(parsed, list), arguments
    assert all(isinstance(a, str) for a in parsed), arguments
    return parsed


def dockerignore_patterns() -> list[tuple[bool, re.Pattern[str]]]:
    """(exclude?, regex) per .dockerignore line, in order (the last match wins)."""
    patterns = []
    for raw in (ROOT / ".dockerignore").read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        exclude = not line.startswith("!")
        glob = line.lstrip("!").strip("/")
        regex = ""
        for token in re.split(r"(\*\*/|\*\*|\*|\?)", glob):
            regex += {"**/": "(.*/)?", "**": ".*", "*": "[^/]*", "?": "[^/]"}.get(
                token, re.escape(token)
            )
        # A pattern naming a directory covers everything below it.
        patterns.append((exclude, re.compile(f"^{regex}(/.*)?$")))
    return patterns


def excluded(relative: str) -> bool:
    """Whether Docker leaves ``relative`` (a repo path) out of the build context."""
    result = False
    for exclude, pattern in dockerignore_patterns():
        if pattern.match(relative):
            result = exclude
    return result


def copy_sources() -> list[str]:
    """Sources of the base Dockerfile's COPY instructions from the build context."""
    sources = []
    for word, args in instructions(ROOT / BASE_DOCKERFILE):
        if word == "COPY" and "--from=" not in args:
            sources.extend(shlex.split(args)[:-1])
    return sources


def stage_context(target: Path) -> None:
    """Copy what the base Dockerfile copies, as Docker would see it, into ``target``."""
    for source in copy_sources():
        path = ROOT / source
        files = [path] if path.is_file() else [p for p in path.rglob("*") if p.is_file()]
        for file in files:
            relative = file.relative_to(ROOT).as_posix()
            if not excluded(relative):
                (target / relative).parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(file, target / relative)


def run(argv: list[str], cwd: Path, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    """Run a command; fail the test with its output if it fails."""
    done = subprocess.run(argv, cwd=cwd, capture_output=True, text=True, timeout=timeout)
    assert done.returncode == 0, f"{shlex.join(argv)} failed:\n{done.stdout}\n{done.stderr}"
    return done


@pytest.fixture(scope="module")
def image_python(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Python of a fresh venv holding the locked runtime requirements and the wheel."""
    tmp = tmp_path_factory.mktemp("image")
    context = tmp / "context"
    stage_context(context)
    requirements = tmp / "requirements.txt"
    run([uv(), *EXPORT.split()[1:], "-o", str(requirements)], cwd=context)
    run([uv(), "build", "--wheel", "--out-dir", str(tmp / "dist"), str(context)], cwd=context)
    (wheel,) = (tmp / "dist").glob("*.whl")
    venv = tmp / "venv"
    run([uv(), "venv", "--python", sys.executable, str(venv)], cwd=tmp)
    python = venv / "bin" / "python"
    run(
        [
            uv(),
            "pip",
            "install",
            "--python",
            str(python),
            "--require-hashes",
            "-r",
            str(requirements),
        ],
        cwd=tmp,
    )
    run([uv(), "pip", "install", "--python", str(python), "--no-deps", str(wheel)], cwd=tmp)
    return python


def test_copy_sources_exist_and_are_in_the_context() -> None:
    """Every COPY source of the base image exists and .dockerignore does not drop it."""
    sources = copy_sources()
    assert sources
    for source in sources:
        assert (ROOT / source).exists(), f"{BASE_DOCKERFILE} copies missing {source}"
        assert not excluded(source), (
            f".dockerignore excludes {source} that {BASE_DOCKERFILE} copies"
        )
    assert excluded(".venv/bin/python")
    assert excluded(".git/HEAD")
    assert excluded("infra/program.py")


def test_base_image_exports_the_lock_as_the_test_does() -> None:
    """The base image installs `uv export` of the lock without dev/infra groups, by hash."""
    runs = " ".join(args for word, args in instructions(ROOT / BASE_DOCKERFILE) if word == "RUN")
    assert EXPORT in runs
    assert "--require-hashes" in runs
    assert "uv build --wheel" in runs
    makefile = (ROOT / "Makefile").read_text()
    (make_uv,) = re.findall(r"^UV_VERSION := (\S+)", makefile, re.M)
    (docker_uv,) = re.findall(r"^ARG UV_VERSION=(\S+)", (ROOT / BASE_DOCKERFILE).read_text(), re.M)
    assert docker_uv == make_uv


def test_base_image_is_slim_non_root_with_the_ca_bundle() -> None:
    """The final stage is python:3.11-slim, runs as a non-root user, has the CA bundle."""
    steps = instructions(ROOT / BASE_DOCKERFILE)
    stages = [args for word, args in steps if word == "FROM"]
    assert stages[-1].startswith("${PYTHON_IMAGE}")
    assert len(stages) >= 2
    text = (ROOT / BASE_DOCKERFILE).read_text()
    assert "ARG PYTHON_IMAGE=python:3.11-slim" in text
    (user,) = [args for word, args in steps if word == "USER"]
    assert user.split(":")[0] not in ("0", "root")
    assert CA_BUNDLE in text
    assert f"LOCAL_DIR={STATE_DIR}" in text


@pytest.mark.parametrize("image", sorted(DOCKERFILES))
def test_dockerfile_runs_the_catalog_command(image: str) -> None:
    """CMD and HEALTHCHECK are the task definition's command and health check."""
    steps = dict(instructions(ROOT / DOCKERFILES[image]))
    assert steps["FROM"] == "${BASE_IMAGE}"
    spec = CATALOG[image]
    assert exec_form(steps["CMD"]) == list(spec.command)
    if spec.health_check is None:
        assert steps["HEALTHCHECK"] == "NONE"
    else:
        check = steps["HEALTHCHECK"].split(" CMD ", 1)[1]
        assert exec_form(check) == list(spec.health_check)


@pytest.mark.parametrize("image", sorted(DOCKERFILES))
def test_image_command_starts_from_the_installed_wheel(image: str, image_python: Path) -> None:
    """The Dockerfile's CMD, run with --help from the installed wheel, exits 0."""
    steps = dict(instructions(ROOT / DOCKERFILES[image]))
    command = exec_form(steps["CMD"])
    assert command[0] == "python"
    env = {
        "PATH": f"{image_python.parent}:{os.environ['PATH']}",
        "HOME": str(image_python.parents[2]),
    }
    done = subprocess.run(
        [str(image_python), *command[1:], "--help"],
        cwd=image_python.parents[2],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, f"{command} --help failed:\n{done.stdout}\n{done.stderr}"
