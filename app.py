"""mmdemo: try and compare image captioners and text-to-image generators in the browser.

    python app.py                       # auto profile: full weights where they resolve, else demo
    python app.py --profile demo        # tiny Shapes-trained weights shipped in checkpoints/demo/
    python app.py --host 0.0.0.0 --port 7860 --share

This file only parses flags and launches; the UI lives in mmdemo/ui, the models in mmdemo/.
"""

from __future__ import annotations

try:  # On ZeroGPU Spaces `spaces` must be imported before anything touches CUDA.
    import spaces  # noqa: F401
except ImportError:
    spaces = None

import argparse
import logging
import os

from mmdemo.runtime import ModelManager
from mmdemo.ui import APP_CSS, build_app
from mmdemo.ui.handlers import AppContext
from mmdemo.weights import PROFILES

QUEUE_MAX_SIZE = 64  # requests waiting beyond this get "queue full" at once rather than waiting for minutes


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="mmdemo Gradio app")
    parser.add_argument("--profile", choices=PROFILES, default=os.environ.get("MMDEMO_PROFILE", "auto"))
    parser.add_argument("--host", default=os.environ.get("GRADIO_SERVER_NAME", "127.0.0.1"))
    parser.add_argument("--port", type=int, default=int(os.environ.get("GRADIO_SERVER_PORT", 7860)))
    parser.add_argument("--share", action="store_true", help="create a public gradio.live link")
    parser.add_argument(
        "--concurrency", type=int, default=1, help="model runs at once (keep 1 on a single GPU)"
    )
    args = parser.parse_args(argv)
    if args.concurrency < 1:
        parser.error("--concurrency must be at least 1")
    return args


def create_demo(profile: str = "auto", concurrency: int = 1, manager: ModelManager | None = None):
    """The app, queued; ``manager`` lets tests inject a model manager (e.g. one with a failing model)."""
    ctx = AppContext.create(profile, manager)
    demo = build_app(ctx, concurrency=concurrency)
    demo.queue(max_size=QUEUE_MAX_SIZE, default_concurrency_limit=concurrency)
    return demo


def main(argv: list[str] | None = None) -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    args = parse_args(argv)
    demo = create_demo(args.profile, args.concurrency)
    demo.launch(server_name=args.host, server_port=args.port, share=args.share, show_error=True, css=APP_CSS)


if __name__ == "__main__":
    main()
