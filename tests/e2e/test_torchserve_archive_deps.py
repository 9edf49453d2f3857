"""``inferd torchserve``: archives as torch-model-archiver makes them and TorchServe keeps them: the
packages of an archive's ``requirements.txt`` (``install_py_dep_per_model=true``), ``--archive-format
tgz`` (``.tar.gz``), a download refused as a duplicate version."""

from __future__ import annotations

import base64
import hashlib
import zipfile
from pathlib import Path

import pytest
import requests

from tests import ts_archives
from tests.e2e.test_torchserve_cli import file_server, torchserve

DEP_HANDLER = '''
import inferd_tiny_dep


def handle(data, context):
    if data is None:  # TorchServe calls a function handler once with no data to initialize it
        return None
    return [inferd_tiny_dep.VALUE] * len(data)
'''


def _record_line(name: str, data: bytes) -> str:
    digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
    return f"{name},sha256={digest},{len(data)}"


def tiny_wheel(folder: Path) -> Path:
    """inferd_tiny_dep 1.0, a pure-Python wheel written by hand (pip installs it with no index)."""
    files = {"inferd_tiny_dep/__init__.py": b'VALUE = "from the wheel"\n',
             "inferd_tiny_dep-1.0.dist-info/METADATA": b"Metadata-Version: 2.1\nName: inferd-tiny-dep\nVersion: 1.0\n",
             "inferd_tiny_dep-1.0.dist-info/WHEEL": b"Wheel-Version: 1.0\nGenerator: hand\nRoot-Is-Purelib: true\n"
                                                     b"Tag: py3-none-any\n"}
    record = [_record_line(name, data) for name, data in files.items()] + ["inferd_tiny_dep-1.0.dist-info/RECORD,,"]
    folder.mkdir(parents=True, exist_ok=True)
    wheel = folder / "inferd_tiny_dep-1.0-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as bundle:
        for name, data in files.items():
            bundle.writestr(name, data)
        bundle.writestr("inferd_tiny_dep-1.0.dist-info/RECORD", "\n".join(record) + "\n")
    return wheel


@pytest.fixture(scope="module")
def archives(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return ts_archives.build_store(tmp_path_factory.mktemp("ts"))


def _deps_archive(tmp_path: Path, requirement: str, archive_format: str = "default") -> Path:
    """deps.mar (or the folder deps): a handler that imports inferd_tiny_dep, and a requirements.txt
    that asks pip for ``requirement`` from a local folder only (no index: no network)."""
    work, store = tmp_path / "work", tmp_path / "store"
    work.mkdir()
    store.mkdir()
    wheels = tiny_wheel(tmp_path / "wheels").parent
    (work / "handler.py").write_text(DEP_HANDLER)
    (work / "empty.pt").write_bytes(b"")
    (work / "requirements.txt").write_text(f"--no-index\n--find-links {wheels}\n{requirement}\n")
    ts_archives.archive(store, "deps", work / "empty.pt", str(work / "handler.py"),
                        requirements_file=work / "requirements.txt", archive_format=archive_format)
    return store


def _register(urls: dict[str, str], url: str = "deps.mar") -> requests.Response:
    return requests.post(f"{urls['management']}/models?url={url}&initial_workers=1&synchronous=true",
                         timeout=300)


def test_install_py_dep_per_model_installs_the_archives_requirements(tmp_path: Path) -> None:
    """TorchServe's ModelManager runs ``pip install -U -t <model folder> -r requirements.txt`` when
    install_py_dep_per_model=true: the handler imports a package the server's Python lacks."""
    store = _deps_archive(tmp_path, "inferd-tiny-dep==1.0")
    with torchserve(tmp_path, {"model_store": str(store), "disable_token_authorization": "true",
                               "enable_model_api": "true", "install_py_dep_per_model": "true"}) as urls:
        response = _register(urls)
        assert response.status_code == 200, response.text
        answer = requests.post(f"{urls['inference']}/predictions/deps", data=b"x", timeout=30)
        assert (answer.status_code, answer.text) == (200, "from the wheel")


def test_without_install_py_dep_per_model_the_requirements_are_not_installed(tmp_path: Path) -> None:
    store = _deps_archive(tmp_path, "inferd-tiny-dep==1.0")
    with torchserve(tmp_path, {"model_store": str(store), "disable_token_authorization": "true",
                               "enable_model_api": "true"}) as urls:
        response = _register(urls)
        assert response.status_code == 500, response.text
        assert "No module named 'inferd_tiny_dep'" in response.json()["message"]


def test_a_no_archive_folders_requirements_are_installed_outside_it(tmp_path: Path) -> None:
    """TorchServe installs into its registration's temporary folder, never into the store's
    no-archive folder: a later server without install_py_dep_per_model finds no package there."""
    store = _deps_archive(tmp_path, "inferd-tiny-dep==1.0", archive_format="no-archive")
    before = sorted(p.name for p in (store / "deps").rglob("*"))
    settings = {"model_store": str(store), "disable_token_authorization": "true", "enable_model_api": "true"}
    with torchserve(tmp_path, {**settings, "install_py_dep_per_model": "true"}) as urls:
        response = _register(urls, "deps")
        assert response.status_code == 200, response.text
        answer = requests.post(f"{urls['inference']}/predictions/deps", data=b"x", timeout=30)
        assert (answer.status_code, answer.text) == (200, "from the wheel")
    assert sorted(p.name for p in (store / "deps").rglob("*")) == before
    with torchserve(tmp_path, settings) as urls:
        response = _register(urls, "deps")
        assert response.status_code == 500, response.text
        assert "No module named 'inferd_tiny_dep'" in response.json()["message"]


def test_a_requirement_pip_cannot_install_fails_the_registration_with_pips_words(tmp_path: Path) -> None:
    store = _deps_archive(tmp_path, "inferd-tiny-dep==2.0")
    with torchserve(tmp_path, {"model_store": str(store), "disable_token_authorization": "true",
                               "enable_model_api": "true", "install_py_dep_per_model": "true"}) as urls:
        response = _register(urls)
        assert response.status_code == 500, response.text
        message = response.json()["message"]
        assert "pip install -r requirements.txt failed (install_py_dep_per_model=true)" in message, message
        assert "inferd-tiny-dep==2.0" in message, message


def test_tgz_archives_register_at_start_and_by_url(archives: Path, tmp_path: Path) -> None:
    """torch-model-archiver --archive-format tgz makes NAME.tar.gz (its files under NAME/); TorchServe
    unpacks any store file that is not a .mar as one, and --models all takes *.tar.gz too."""
    store = tmp_path / "store"
    store.mkdir()
    work = archives.parent / "work"
    for name in ("doubler_tgz", "doubler_tgz2"):
        ts_archives.archive(store, name, work / "doubler.pth", str(work / "handler.py"),
                            model_file=work / "model.py", archive_format="tgz")
    assert (store / "doubler_tgz.tar.gz").is_file()
    body = {"values": [1.0, 2.0, 3.0, 4.0]}
    expected = ts_archives.doubler_in_process(work, [body["values"]])[0]
    with torchserve(tmp_path, {"model_store": str(store), "load_models": "all", "disable_token_authorization": "true",
                               "enable_model_api": "true", "default_workers_per_model": "1"}) as urls:
        for name in ("doubler_tgz", "doubler_tgz2"):
            answer = requests.post(f"{urls['inference']}/predictions/{name}", json=body, timeout=30)
            assert answer.status_code == 200, answer.text
            assert answer.json()["scores"] == pytest.approx(expected, rel=1e-5)
        assert requests.delete(f"{urls['management']}/models/doubler_tgz2", timeout=30).status_code == 200
        response = requests.post(f"{urls['management']}/models?url=doubler_tgz2.tar.gz&model_name=again"
                                 "&initial_workers=1&synchronous=true", timeout=120)
        assert response.status_code == 200, response.text
        answer = requests.post(f"{urls['inference']}/predictions/again", json=body, timeout=30)
        assert answer.status_code == 200, answer.text


def test_a_download_refused_as_a_registered_version_stays_in_the_store(archives: Path, tmp_path: Path) -> None:
    """TorchServe downloads first and refuses a version already registered afterwards (409), leaving
    the file in the store, so registering it by its name there is refused the same way."""
    store = tmp_path / "store"
    store.mkdir()
    (store / "first.mar").write_bytes((archives / "doubler.mar").read_bytes())
    with file_server(archives) as remote, torchserve(tmp_path, {
            "model_store": str(store), "disable_token_authorization": "true", "enable_model_api": "true",
            "allowed_urls": f"{remote}/.*"}) as urls:
        management = urls["management"]
        assert requests.post(f"{management}/models?url=first.mar", timeout=120).status_code == 200
        conflict = {"code": 409, "type": "ConflictStatusException",
                    "message": "Model version 1.0 is already registered for model doubler"}
        response = requests.post(f"{management}/models?url={remote}/doubler.mar", timeout=120)
        assert (response.status_code, response.json()) == (409, conflict)
        assert (store / "doubler.mar").is_file()
        response = requests.post(f"{management}/models?url=doubler.mar", timeout=120)
        assert (response.status_code, response.json()) == (409, conflict)


@pytest.mark.parametrize("archive_format", ["default", "no-archive"])
def test_a_requirement_given_by_a_path_in_the_archive_is_installed(tmp_path: Path, archive_format: str) -> None:
    """pip runs in the model's folder, as TorchServe runs it (its working directory is the model's
    folder), so a requirements.txt line naming a wheel of the archive by a relative path installs it:
    for a no-archive folder too, whose packages go to a scratch folder (pip ran there and found none)."""
    work, store = tmp_path / "work", tmp_path / "store"
    work.mkdir()
    store.mkdir()
    wheel = tiny_wheel(work)
    (work / "handler.py").write_text(DEP_HANDLER)
    (work / "empty.pt").write_bytes(b"")
    (work / "requirements.txt").write_text(f"--no-index\n./{wheel.name}\n")
    ts_archives.archive(store, "deps", work / "empty.pt", str(work / "handler.py"), extra=[wheel],
                        requirements_file=work / "requirements.txt", archive_format=archive_format)
    with torchserve(tmp_path, {"model_store": str(store), "disable_token_authorization": "true",
                               "enable_model_api": "true", "install_py_dep_per_model": "true"}) as urls:
        response = _register(urls, "deps.mar" if archive_format == "default" else "deps")
        assert response.status_code == 200, response.text
        answer = requests.post(f"{urls['inference']}/predictions/deps", data=b"x", timeout=30)
        assert (answer.status_code, answer.text) == (200, "from the wheel")
