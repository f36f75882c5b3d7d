"""qsep's demo page as a Hugging Face Space (sdk: gradio, app_file: app.py) or a plain script: `python app.py`.

The same page as `qsep demo` (separator/demo.py). Set QSEP_DEMO_MODEL to select another model at start;
models are found as everywhere in qsep (`qsep models`: $QSEP_MODELS, ~/.cache/qsep/models, the shipped one).
"""
import os

from separator.demo import build_demo, launch_options

demo = build_demo(default_model=os.environ.get("QSEP_DEMO_MODEL") or None)

if __name__ == "__main__":
    demo.launch(**launch_options())
