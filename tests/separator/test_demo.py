"""`qsep demo`: the page's functions through Gradio's Python client, and the page in a real headless browser.

The server is started on 127.0.0.1 by the tests, with the shipped model; nothing is downloaded.
"""
import math
import os
import shutil
import socket
import time
from pathlib import Path

import pytest
import soundfile as sf
import torch

from qsep_core import audio

gr = pytest.importorskip("gradio", reason="the demo extra (gradio) is not installed: pip install -e '.[demo]'")
from gradio_client import Client, handle_file  # noqa: E402

from separator import demo as demo_mod  # noqa: E402

pytestmark = pytest.mark.slow  # every test here separates with the shipped model through a web server


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    root = tmp_path_factory.mktemp("demo-sessions")
    page = demo_mod.build_demo(root=root)
    port = _free_port()
    page.launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, quiet=True,
                **demo_mod.launch_options())
    yield f"http://127.0.0.1:{port}/", root
    page.close()


@pytest.fixture
def song(tmp_path):
    """1.5 s of stereo at 44.1 kHz: a tone left, noise right (different channels must stay different)."""
    rate = 44100
    t = torch.arange(int(rate * 1.5)) / rate
    g = torch.Generator().manual_seed(0)
    x = torch.stack([0.3 * torch.sin(2 * math.pi * 440 * t), 0.1 * torch.randn(len(t), generator=g)])
    path = tmp_path / "my song.wav"
    audio.save(path, x, rate, bit_depth="32f")
    return path


def _slots(out):
    """(title, target, residual, picture) of each result slot that holds a result."""
    n = demo_mod.MAX_QUERIES
    slots = [out[4 * i: 4 * i + 4] for i in range(n)]  # the groups' visibility is not sent to the client
    return [s for s in slots if s[1]]


def test_upload_separate_outputs_have_the_input_rate_channels_and_sum_to_it(server, song):
    url, root = server
    client = Client(url, verbose=False)
    out = client.predict(handle_file(str(song)), "qsep-starter", "vocals\nbird song", ["Canidae, dogs, wolves"], [], "wind",
                         api_name="/separate")
    results = _slots(out)
    assert [r[0] for r in results] == ["### vocals_not_wind", "### bird_song_not_wind", "### canidae_dogs_wolves_not_wind"]
    mix, rate = sf.read(song, dtype="float32")
    for title, target, residual, picture in results:
        t, rt = sf.read(target, dtype="float32")
        r, rr = sf.read(residual, dtype="float32")
        assert rt == rr == rate == 44100 and t.shape == r.shape == mix.shape == (66150, 2)
        assert abs(t + r - mix).max() < 1e-6  # float32 outputs: exact to float rounding
        assert Path(picture).read_bytes()[:4] == b"\x89PNG"
    assert "Vocals" in out[-1]  # the report says which classes the text was routed to
    # the session's files are in its own folder under the demo's root
    sessions = [p for p in root.iterdir() if p.is_dir()]
    assert len(sessions) >= 1 and any(list(s.rglob("vocals_not_wind.wav")) for s in sessions)


def test_sessions_get_their_own_folders_and_lose_them_when_they_end(server, song):
    url, root = server
    before = {p.name for p in root.iterdir()}
    a, b = Client(url, verbose=False), Client(url, verbose=False)
    for c in (a, b):
        c.predict(handle_file(str(song)), "qsep-starter", "vocals", [], [], "", api_name="/separate")
    new = {p.name for p in root.iterdir()} - before
    assert len(new) == 2  # two sessions, two folders: neither sees the other's files
    folders = [root / n for n in new]
    assert all(len(list(f.rglob("*.wav"))) == 2 for f in folders)
    first, second = sorted(new)
    demo_mod.DemoSession(root, first).close()
    assert not (root / first).exists() and (root / second).is_dir()


def test_bad_files_and_queries_get_the_clis_messages(server, tmp_path, song):
    url, _ = server
    client = Client(url, verbose=False)
    broken = tmp_path / "broken.wav"
    broken.write_bytes(b"RIFF\x24\x00\x00\x00WAVEfmt " + b"\x00" * 40)
    with pytest.raises(Exception, match=r"broken\.wav") as err:
        client.predict(handle_file(str(broken)), "qsep-starter", "vocals", [], [], "", api_name="/separate")
    assert "/tmp/gradio" not in str(err.value)  # the server's temporary path is not shown
    with pytest.raises(Exception, match="empty query"):
        client.predict(handle_file(str(song)), "qsep-starter", "", [], [], "", api_name="/separate")
    with pytest.raises(Exception, match="at most 4"):
        client.predict(handle_file(str(song)), "qsep-starter", "a\nb\nc\nd\ne", [], [], "", api_name="/separate")


def test_what_is_in_this_file(server, song):
    url, _ = server
    rows, picture = Client(url, verbose=False).predict(handle_file(str(song)), "qsep-starter", api_name="/detect")
    data = rows["data"] if isinstance(rows, dict) else rows
    assert 1 <= len(data) <= demo_mod.DETECT_TOP_K
    assert all(0.0 <= float(r[1]) <= float(r[2]) <= 1.5 + 1e-6 and 0.0 < float(r[3]) <= 1.0 for r in data)
    assert Path(picture).read_bytes()[:4] == b"\x89PNG"


def _chromium() -> tuple[str, str] | None:
    browser = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
    driver = shutil.which("chromedriver") or (os.path.exists("/usr/bin/chromedriver") and "/usr/bin/chromedriver")
    return (browser, driver) if browser and driver else None


def test_page_in_a_headless_browser(server, tmp_path):
    """Load the page, upload a file, run a text query, wait for the players; no request leaves 127.0.0.1."""
    found = _chromium()
    if found is None:
        pytest.skip("no Chromium + chromedriver installed (apt-get install chromium chromium-driver; .ci/run installs them)")
    webdriver = pytest.importorskip("selenium.webdriver", reason="selenium (the dev extra) is not installed")
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ec
    from selenium.webdriver.support.ui import WebDriverWait

    url, root = server
    song = tmp_path / "demo_mix.flac"  # the repository's 3-s demo mixture (synthetic music)
    shutil.copy(Path(__file__).resolve().parents[2] / "examples" / "demo_mix.flac", song)
    before = {p.name for p in root.iterdir()}
    browser, driver_path = found
    opts = webdriver.ChromeOptions()
    opts.binary_location = browser
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1200,1500",
                "--disable-gpu", "--no-first-run", "--disable-background-networking"):
        opts.add_argument(arg)
    opts.set_capability("goog:loggingPrefs", {"performance": "ALL"})
    service = webdriver.ChromeService(executable_path=driver_path)
    drv = webdriver.Chrome(options=opts, service=service)
    try:
        wait = WebDriverWait(drv, 120)
        drv.get(url)
        wait.until(ec.presence_of_element_located((By.CSS_SELECTOR, "#mixture input[type=file]")))
        drv.find_element(By.CSS_SELECTOR, "#mixture input[type=file]").send_keys(str(song))
        wait.until(ec.presence_of_element_located((By.CSS_SELECTOR, "#mixture audio, #mixture [data-testid=waveform-x]")))
        drv.find_element(By.CSS_SELECTOR, "#text textarea").send_keys("vocals")
        drv.find_element(By.CSS_SELECTOR, "#separate").click()
        # the result players: their audio elements get the served files
        wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, "#target-0 audio[src], #target-0 [data-testid=waveform-target]")
                   and d.find_elements(By.CSS_SELECTOR, "#spectrogram-0 img"))
        time.sleep(1.0)  # let the waveforms draw
        shot = tmp_path / "demo.png"
        drv.save_screenshot(str(shot))
        assert shot.read_bytes()[:4] == b"\x89PNG"
        if os.environ.get("QSEP_DEMO_SCREENSHOT"):  # how docs/demo.png is made (256 colours keep it small)
            from PIL import Image

            Image.open(shot).convert("RGB").quantize(256).save(os.environ["QSEP_DEMO_SCREENSHOT"], optimize=True)
        import json

        urls = []
        for entry in drv.get_log("performance"):
            msg = json.loads(entry["message"])["message"]
            if msg.get("method") == "Network.requestWillBeSent":
                urls.append(msg["params"]["request"]["url"])
        assert urls, "the browser logged no requests"
        outside = [u for u in urls if not u.startswith(("http://127.0.0.1", "ws://127.0.0.1", "data:", "blob:"))]
        assert not outside, f"the page fetched from outside 127.0.0.1: {outside[:5]}"
        ours = {p.name for p in root.iterdir()} - before
        assert len(ours) == 1  # the browser's session folder
    finally:
        drv.quit()
    # closing the page ends the session: its folder goes
    deadline = time.monotonic() + 30
    while any((root / n).exists() for n in ours):
        if time.monotonic() > deadline:
            break
        time.sleep(0.5)
    assert not any((root / n).exists() for n in ours), "the session's folder outlived the page"


def test_long_files_report_progress_per_chunk(tmp_path):
    """The page's progress bar is fed chunk by chunk: a 20-s file at the default 6-s segments gives several steps."""
    rate = 16000
    path = tmp_path / "long.wav"
    audio.save(path, 0.1 * torch.randn(1, rate * 20, generator=torch.Generator().manual_seed(2)), rate, bit_depth="32f")
    seen = []
    results, _ = demo_mod.separate_queries(path, None, ["vocals"], out_dir=tmp_path / "out",
                                           progress=lambda f, m: seen.append((f, m)))
    fractions = [f for f, _ in seen]
    assert len(fractions) >= 3 and fractions == sorted(fractions) and fractions[-1] == pytest.approx(1.0)
    assert all(m.startswith("separating vocals: chunk") for _, m in seen)
    assert sf.info(results[0]["target"]).frames == rate * 20
