#!/usr/bin/env bash
# One-command set-up of qsep on a Debian/Ubuntu machine (x86_64, Python >= 3.10):
#   system packages (ffmpeg for MUSDB18 .mp4 stems, libsndfile; chromium + chromium-driver, the headless browser
#   the demo page's test drives), a virtual environment in .venv
#   with the exact pinned versions of constraints.txt, qsep itself (editable, with every extra), then `qsep --help` and a first
#   separation of examples/demo_mix.flac with the shipped model.
# Re-running it is safe: finished steps are fast no-ops.
#   QSEP_VENV=path   put the environment elsewhere (default: .venv next to this file)
#   QSEP_NO_APT=1    skip the system packages (install ffmpeg yourself: conda install ffmpeg / brew install ffmpeg;
#                    without chromium the browser test of the demo page is skipped)
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
venv="${QSEP_VENV:-$here/.venv}"
python="${PYTHON:-python3}"

if [ "${QSEP_NO_APT:-0}" != 1 ] && ! { command -v ffmpeg && command -v chromium && command -v chromedriver; } >/dev/null 2>&1; then
  sudo=""
  if [ "$(id -u)" != 0 ]; then sudo="sudo"; fi
  echo "== installing system packages (ffmpeg, libsndfile1, chromium, chromium-driver)"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends ffmpeg libsndfile1 chromium chromium-driver >/dev/null
fi

if [ ! -x "$venv/bin/python" ]; then
  echo "== creating virtual environment $venv"
  "$python" -m venv "$venv"
fi
echo "== installing qsep and its pinned dependencies (about 5 GB, a few minutes the first time)"
"$venv/bin/python" -m pip install -q --upgrade pip 2>&1 | grep -v "^WARNING: Location" || true
# every extra (evaluation: museval + musdb, plots: matplotlib, hdf5: h5py, demo: gradio) and the test tools
"$venv/bin/python" -m pip install -q -c "$here/constraints.txt" -e "$here[all,dev]" 2>&1 | grep -v "^WARNING: Location" || true
"$venv/bin/python" -c "import qsep_core, separator, sed, torch, torchaudio, soundfile, matplotlib, h5py, gradio, selenium
import importlib.util as u; assert u.find_spec('museval') and u.find_spec('musdb')" \
  || { echo "install failed: qsep does not import; see the pip output above" >&2; exit 1; }

echo "== qsep is installed: $venv/bin/qsep"
"$venv/bin/qsep" --help
echo "== first separation with the shipped model: examples/demo_mix.flac -> separated/demo_mix/{vocals,no_vocals}.wav"
"$venv/bin/qsep" separate "$here/examples/demo_mix.flac" --text vocals -o "$here/separated" --overwrite
