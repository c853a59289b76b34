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

from mmdemo.arena.battles import ArenaConfig
from mmdemo.monitoring import DEFAULT_CACHE_TTL, DEFAULT_MAX_FILE_SIZE, OpsSettings, setup_request_log
from mmdemo.runtime import ModelManager
from mmdemo.ui import APP_CSS, build_app
from mmdemo.ui.handlers import AppContext
from mmdemo.ui.ops import launch_options
from mmdemo.weights import PROFILES

QUEUE_MAX_SIZE = 64  # requests waiting beyond this get "queue full" at once rather than waiting for minutes


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="mmdemo Gradio app")
    parser.add_argument("--profile", choices=PROFILES, default=os.environ.get("MMDEMO_PROFILE", "auto"))
    parser.add_argument("--host", default=os.environ.get("GRADIO_SERVER_NAME", "127.0.0.1"))
    parser.add_argument(
        "--port",
        type=int,
        default=None,
        help="port to serve on; by default Gradio binds the first free one from $GRADIO_SERVER_PORT (else 7860) "
        "upwards and prints the URL",
    )
    parser.add_argument("--share", action="store_true", help="create a public gradio.live link")
    parser.add_argument(
        "--concurrency", type=int, default=1, help="model runs at once (keep 1 on a single GPU)"
    )
    env = OpsSettings.from_env()
    parser.add_argument(
        "--cache-ttl",
        type=int,
        default=env.cache_ttl,
        help=f"seconds generated files and uploads are kept (env MMDEMO_CACHE_TTL, default {DEFAULT_CACHE_TTL})",
    )
    parser.add_argument(
        "--max-file-size",
        default=env.max_file_size,
        help=f"largest upload accepted, e.g. 20mb (env MMDEMO_MAX_FILE_SIZE, default {DEFAULT_MAX_FILE_SIZE})",
    )
    parser.add_argument(
        "--data-dir",
        default=os.environ.get("MMDEMO_DATA_DIR"),
        help="arena votes (SQLite) and their pictures (env MMDEMO_DATA_DIR; default /data/mmdemo on a Space "
        "with persistent storage, else ~/.cache/mmdemo)",
    )
    parser.add_argument(
        "--db-url",
        default=os.environ.get("MMDEMO_DB_URL"),
        help="arena database instead of SQLite, e.g. postgresql://user:pass@host/db (env MMDEMO_DB_URL)",
    )
    args = parser.parse_args(argv)
    args.arena = ArenaConfig.from_env(args.data_dir, args.db_url)
    if args.cache_ttl < 1:
        parser.error("--cache-ttl must be at least 1 second")
    args.ops = OpsSettings(args.cache_ttl, args.max_file_size, env.log_prompts)
    if args.concurrency < 1:
        parser.error("--concurrency must be at least 1")
    if args.profile not in PROFILES:  # argparse checks choices on the command line, not a default from the env
        parser.error(f"MMDEMO_PROFILE must be one of {', '.join(PROFILES)}, got {args.profile!r}")
    return args


def create_demo(
    profile: str = "auto",
    concurrency: int = 1,
    manager: ModelManager | None = None,
    settings: OpsSettings | None = None,
    arena: ArenaConfig | None = None,
):
    """The app, queued; ``manager`` lets tests inject a model manager (e.g. one with a failing model).

    ``settings``: cache time, upload limit, prompt logging (default: from the environment)."""
    ctx = AppContext.create(profile, manager)
    demo = build_app(ctx, concurrency=concurrency, settings=settings, arena_config=arena)
    demo.queue(max_size=QUEUE_MAX_SIZE, default_concurrency_limit=concurrency)
    return demo


def main(argv: list[str] | None = None) -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    setup_request_log()  # one JSON line per model run on stderr, apart from the text log
    args = parse_args(argv)
    demo = create_demo(args.profile, args.concurrency, settings=args.ops, arena=args.arena)
    demo.launch(
        server_name=args.host,
        server_port=args.port,
        share=args.share,
        show_error=True,
        css=APP_CSS,
        **launch_options(demo, args.ops),
    )


if __name__ == "__main__":
    main()
