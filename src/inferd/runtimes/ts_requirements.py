"""TorchServe's ``install_py_dep_per_model=true``: an archive's ``requirements.txt`` is pip-installed
for that model before its handler loads.

As TorchServe's front end does (``ModelManager.setupModelDependencies``, pytorch/serve@62c4d6a1f),
``pip install -U -t <folder> -r <requirements>`` runs with the server's Python, in the model's
folder (a relative path in the file names a file of the archive), into a folder of the model's
own: the unpacked archive, or for a ``no-archive`` folder of the store a scratch folder beside it
(TorchServe installs into its registration's temporary folder, never into the operator's), so the
handler imports them and the server's environment is left alone. A failed install fails the
model's load with pip's own words.
"""

from __future__ import annotations

import fcntl
import hashlib
import logging
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

from inferd.errors import ConfigError

INSTALL_ENV = "INFERD_TS_INSTALL_PY_DEP_PER_MODEL"  # set by inferd torchserve from config.properties
MARKER = ".inferd-requirements-installed"  # the installed requirements' hash: instances install once
PIP_TIMEOUT_S = 600
OUTPUT_TAIL = 2000

log = logging.getLogger("inferd.handler")


def wanted(manifest: dict[str, Any]) -> bool:
    """Whether the archive's requirements are to be installed (it has some, and the server was asked)."""
    return bool(manifest["model"].get("requirementsFile")) and os.environ.get(INSTALL_ENV) == "true"


def install(model_name: str, model_dir: Path, manifest: dict[str, Any], target: Path) -> None:
    """Install the manifest's ``requirementsFile`` (a file of ``model_dir``) into ``target``, a folder
    of this model's own, and put it on ``sys.path``."""
    requirements_name = manifest["model"]["requirementsFile"]
    requirements = (model_dir / str(requirements_name)).resolve()
    if not requirements.is_relative_to(model_dir.resolve()) or not requirements.is_file():
        raise ConfigError(f"model '{model_name}': the manifest's requirementsFile {requirements_name!r} "
                          "is not a file in the archive")
    digest = hashlib.sha256(requirements.read_bytes()).hexdigest()
    with open(target / f"{MARKER}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # the model's other instances wait, then find it installed
        marker = target / MARKER
        if not (marker.is_file() and marker.read_text() == digest):
            _pip_install(model_name, target, requirements, model_dir)
            marker.write_text(digest)
    if str(target) not in sys.path:
        sys.path.insert(0, str(target))


def _pip_install(model_name: str, target: Path, requirements: Path, model_dir: Path) -> None:
    """pip runs in the model's folder, as TorchServe runs it: a requirement given as a relative path
    (a wheel of the archive) is found there, wherever the packages go."""
    command = [sys.executable, "-m", "pip", "install", "-U", "-t", str(target), "-r", str(requirements)]
    try:
        done = subprocess.run(command, cwd=model_dir, capture_output=True, text=True, timeout=PIP_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        raise ConfigError(f"model '{model_name}': pip install -r {requirements.name} took over "
                          f"{PIP_TIMEOUT_S} s (install_py_dep_per_model=true)") from None
    if done.returncode != 0:
        output = (done.stdout + done.stderr).strip()[-OUTPUT_TAIL:]
        raise ConfigError(f"model '{model_name}': pip install -r {requirements.name} failed "
                          f"(install_py_dep_per_model=true), exit status {done.returncode}: {output}")
    log.info("Installed custom pip packages for model %s", model_name)
