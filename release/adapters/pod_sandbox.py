"""The local pods' sandbox: who a pod runs as, what environment it sees, and the one folder it may use.

Model code (handler files, TorchScript, pickles) runs inside the pods, so a pod gets nothing of the control plane:
an environment built from an allow-list (no ``RELEASE_*``, no database URL, no cloud credentials), its own folder
outside ``RELEASE_HOME`` holding a copy of the registered artifact, and, when the control plane runs as root, an
unprivileged account (``RELEASE_POD_USER``) for which ``RELEASE_HOME`` (mode 0700) is closed.
"""

from __future__ import annotations

import hashlib
import os
import pwd
import shutil
import stat
import subprocess
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import structlog

from schemas.errors import PermanentError, Reason

log = structlog.get_logger("release.adapters.pod_sandbox")

#: Variables a pod inherits when set: locale, search path, which accelerators and how many CPU threads.
PASSTHROUGH = ("PATH", "LANG", "LC_ALL", "LC_CTYPE", "TZ", "CUDA_VISIBLE_DEVICES", "NVIDIA_VISIBLE_DEVICES",
               "CUDA_DEVICE_ORDER", "OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS",
               "NUMEXPR_NUM_THREADS")
#: Prefixes a deployment's own ``env`` may never set: the control plane's settings and credentials.
FORBIDDEN_PREFIXES = ("RELEASE_", "GOOGLE_", "CLOUDSDK_", "AWS_", "AZURE_", "DATABASE_", "PG")
AUTO = "auto"


@dataclass(frozen=True)
class PodUser:
    """The account pods run as; None in its place means the control plane's own account."""

    name: str
    uid: int
    gid: int


def pod_environment(*, folder: Path, code: Path, extra: Mapping[str, str],
                    parent: Mapping[str, str]) -> dict[str, str]:
    """The whole environment of a pod: allow-listed variables, its folder as HOME and TMPDIR, the code path."""
    env = {name: parent[name] for name in PASSTHROUGH if name in parent}
    env.update({name: value for name, value in extra.items() if not name.upper().startswith(FORBIDDEN_PREFIXES)})
    env.update({"HOME": str(folder), "TMPDIR": str(folder / "tmp"), "XDG_CACHE_HOME": str(folder / "cache"),
                "PYTHONPATH": str(code), "PYTHONDONTWRITEBYTECODE": "1", "PYTHONNOUSERSITE": "1"})
    return env


def default_pod_root(home: Path) -> Path:
    """Where pod folders live: under the system temp folder, since every folder above them must be traversable."""
    key = hashlib.sha256(str(home.resolve()).encode()).hexdigest()[:12]
    return Path(tempfile.gettempdir()) / f"release-pods-{key}"


def ensure_pod_root(root: Path) -> None:
    """Create the pods' root folder (0711: traversable, not listable) and make sure it is ours.

    It lives in a shared temp folder, so an account could create it first, or a link in its place.
    """
    root.mkdir(mode=0o711, parents=True, exist_ok=True)
    info = os.lstat(root)
    if stat.S_ISLNK(info.st_mode) or not stat.S_ISDIR(info.st_mode) or info.st_uid != os.geteuid():
        raise PermanentError(f"pod folder root {root} is not a folder owned by this account",
                             reason=Reason.ROLLOUT_FAILED, hint="Remove it, or set RELEASE_POD_ROOT elsewhere.")
    root.chmod(0o711)


def secure_home(home: Path) -> None:
    """Close the state folder to every other account: the pods' user above all."""
    home.mkdir(parents=True, exist_ok=True)
    home.chmod(0o700)


def _account(name: str) -> PodUser:
    try:
        entry = pwd.getpwnam(name)
    except KeyError as e:
        raise PermanentError(f"pod user {name!r} does not exist", reason=Reason.ROLLOUT_FAILED,
                             hint="Set RELEASE_POD_USER to an existing unprivileged account.") from e
    if entry.pw_uid == 0:
        raise PermanentError(f"pod user {name!r} is root", reason=Reason.ROLLOUT_FAILED,
                             hint="Set RELEASE_POD_USER to an unprivileged account.")
    return PodUser(name=name, uid=entry.pw_uid, gid=entry.pw_gid)


def _can_run(user: PodUser, *, python: str, code: Path) -> str:
    """'' when ``user`` can start the pod runtime; else what went wrong."""
    env = pod_environment(folder=Path(tempfile.gettempdir()), code=code, extra={}, parent=os.environ)
    try:
        done = subprocess.run([python, "-c", "import handlers.server"], env=env, cwd="/", capture_output=True,
                              timeout=120, user=user.uid, group=user.gid, extra_groups=[], check=False)
    except OSError as e:
        return str(e)
    return "" if done.returncode == 0 else done.stderr.decode(errors="replace")[-500:]


def resolve_pod_user(setting: str, *, python: str, code: Path) -> PodUser | None:
    """The account pods run as, from ``RELEASE_POD_USER``.

    Only root can switch accounts, so a control plane that is not root runs pods as itself. A named account that
    cannot run the pod runtime (an interpreter it may not read) is an error; ``auto`` tries ``nobody`` and falls
    back to the control plane's account with a warning, keeping the allow-listed environment and own folder.
    """
    if os.geteuid() != 0 or setting == "":
        return None
    user = _account("nobody" if setting == AUTO else setting)
    problem = _can_run(user, python=python, code=code)
    if not problem:
        return user
    if setting != AUTO:
        raise PermanentError(f"pod user {user.name!r} cannot run {python}: {problem}", reason=Reason.ROLLOUT_FAILED,
                             hint="Install the pod runtime where that account can read it.")
    log.warning("pod_sandbox.user_unavailable", user=user.name, python=python, problem=problem.strip()[-200:],
                hint="pods run as the control plane's account; install Python where the pod user can read it")
    return None


def _chown_tree(root: Path, user: PodUser) -> None:
    os.chown(root, user.uid, user.gid)
    for folder, dirs, files in os.walk(root):
        for name in dirs + files:
            os.chown(Path(folder) / name, user.uid, user.gid, follow_symlinks=False)


def prepare_pod_folder(folder: Path, *, artifact: Path, user: PodUser | None) -> Path:
    """A fresh folder for one pod with its own copy of the artifact; returns the copy's path.

    The folder (0700) belongs to the pod's account; the copy is the registered artifact, which the pod verifies
    again against the registered digest before it loads anything.
    """
    empty_pod_folder(folder, user=user)
    return place_artifact(folder, artifact=artifact, user=user)


def empty_pod_folder(folder: Path, *, user: PodUser | None) -> None:
    """A fresh folder (0700, the pod account's) for one pod, with nothing in it but its tmp, cache and work."""
    shutil.rmtree(folder, ignore_errors=True)
    folder.parent.mkdir(parents=True, exist_ok=True)
    folder.parent.chmod(0o711)  # traversable, not listable: a pod cannot see its neighbours' names
    folder.mkdir(mode=0o700)
    for sub in ("tmp", "cache", "work"):
        (folder / sub).mkdir()
    if user is not None:
        _chown_tree(folder, user)


def place_artifact(folder: Path, *, artifact: Path, user: PodUser | None) -> Path:
    """Copy the registered artifact into a pod's folder (the pod's account owns the copy); returns its path."""
    local = folder / ("artifact.mar" if artifact.is_file() else "artifact")
    if artifact.is_file():
        shutil.copyfile(artifact, local)
    else:
        shutil.copytree(artifact, local, symlinks=True)
    if user is not None and local.is_dir():
        _chown_tree(local, user)
    elif user is not None:
        os.chown(local, user.uid, user.gid)
    return local


def run_as(user: PodUser | None) -> dict[str, object]:
    """``subprocess.Popen`` keywords that start a process as ``user`` with no supplementary groups."""
    if user is None:
        return {}
    return {"user": user.uid, "group": user.gid, "extra_groups": []}


def start_pod(command: list[str], *, folder: Path, log_path: Path, stdin: int, user: PodUser | None,
              env: dict[str, str]) -> subprocess.Popen[bytes]:
    """Start a pod process in its folder, as ``user``, with exactly ``env``, logging to ``log_path``.

    A new session: the pod outlives a crash of the control plane, so the next run can adopt it.
    """
    with log_path.open("ab") as log_file:
        return subprocess.Popen(  # type: ignore[call-overload, no-any-return]
            command, cwd=folder, stdin=stdin, stdout=log_file, stderr=subprocess.STDOUT, env=env,
            start_new_session=True, **run_as(user))


POD_PACKAGES = ("handlers", "schemas")


def pod_code(root: Path, *, source: Path) -> Path:
    """``handlers/`` and ``schemas/`` copied under the pod root, readable by any account: pods import only what
    they ship with, and from a folder their account can read wherever the repository lives (a clone under a
    private folder would otherwise leave an unprivileged pod unable to import its own server). The copy is named
    by its content, so a new backend never replaces the code under pods that are still running."""
    files = sorted(p for package in POD_PACKAGES for p in (source / package).rglob("*.py"))
    digest = hashlib.sha256()
    for path in files:
        digest.update(str(path.relative_to(source)).encode() + b"\0" + path.read_bytes())
    target = root / f"code-{digest.hexdigest()[:16]}"
    if target.exists():
        return target
    staging = Path(tempfile.mkdtemp(prefix=".code-", dir=root))
    for path in files:
        copy = staging / path.relative_to(source)
        copy.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(path, copy)
        copy.chmod(0o644)
    for folder in [staging, *(p for p in staging.rglob("*") if p.is_dir())]:
        folder.chmod(0o755)
    try:
        staging.rename(target)
    except OSError:  # another backend made the same copy first
        shutil.rmtree(staging, ignore_errors=True)
    return target
