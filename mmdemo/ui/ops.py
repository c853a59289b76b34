"""What the owner of a long-running deployment uses: the health and stats endpoints, the live numbers in the
About tab, and the launch options that bound disk use (cache time, upload limit, empty-folder sweep)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any

import gradio as gr
from gradio.utils import get_upload_folder
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from mmdemo.monitoring import OpsSettings, folder_size, sweep_empty_dirs
from mmdemo.registry import REGISTRY
from mmdemo.ui.handlers import AppContext

log = logging.getLogger(__name__)

STATS_REFRESH_SECONDS = 10
STATS_HEADERS = ["model", "runs", "ok", "recovered", "errors", "unavailable", "p50 s", "p90 s", "p99 s"]


def health_report(ctx: AppContext) -> dict[str, Any]:
    """Cheap readiness: up, and per model id which weights resolve (nothing is loaded or downloaded)."""
    loaded = ctx.manager.loaded()
    models = {
        model_id: {
            "kind": spec.kind,
            "weights": ctx.availability.get(model_id),  # "full", "demo" or None (unavailable)
            "loaded_on": loaded.get(model_id, {}).get("device"),
        }
        for model_id, spec in REGISTRY.items()
    }
    missing = [m for m, info in models.items() if info["weights"] is None]
    return {
        "status": "degraded" if missing else "ok",
        "profile": ctx.profile,
        "uptime_seconds": ctx.manager.monitor.uptime_seconds(),
        "models": models,
        "unavailable": missing,
    }


def stats_report(ctx: AppContext, settings: OpsSettings) -> dict[str, Any]:
    """Per-model runs, outcomes and latency percentiles since start, and what the file cache holds now."""
    size, entries = folder_size(get_upload_folder())
    return {
        "uptime_seconds": ctx.manager.monitor.uptime_seconds(),
        "models": ctx.manager.monitor.snapshot(),
        "cache": {
            "folder": get_upload_folder(),
            "megabytes": round(size / 2**20, 2),
            "entries": entries,
            "ttl_seconds": settings.cache_ttl,
        },
        "max_upload": settings.max_file_size,
    }


def stats_rows(ctx: AppContext) -> list[list]:
    rows = []
    for model_id, s in ctx.manager.monitor.snapshot().items():
        name = REGISTRY[model_id].display_name if model_id in REGISTRY else model_id
        rows.append(
            [name, s["runs"], s["ok"], s["recovered"], s["errors"], s["unavailable"]]
            + ["-" if s[k] is None else f"{s[k]:.2f}" for k in ("p50_seconds", "p90_seconds", "p99_seconds")]
        )
    return rows


def register_endpoints(ctx: AppContext, settings: OpsSettings) -> None:
    """``/health`` and ``/stats`` API endpoints; outside the queue, so a busy or full queue never hides them."""

    def health() -> dict:
        """Readiness: {"status", "profile", "uptime_seconds", "models": {id: {"weights", ...}}, "unavailable"}."""
        return health_report(ctx)

    def stats() -> dict:
        """Per-model runs, ok/recovered/errors and p50/p90/p99 seconds since start, and the cache's size."""
        return stats_report(ctx, settings)

    gr.api(health, api_name="health", queue=False)
    gr.api(stats, api_name="stats", queue=False)


def create_live_stats(ctx: AppContext, demo: gr.Blocks) -> None:
    """A table of per-model numbers since start in the About tab, refreshed while the page is open."""
    gr.Markdown(
        "### Live: model runs since the app started\n"
        f"Refreshed every {STATS_REFRESH_SECONDS} s. Percentiles are over each model's last "
        "1000 successful runs; *recovered* runs succeeded on the retry after an out-of-memory error. "
        "The same numbers as JSON: the `stats` API endpoint."
    )
    table = gr.Dataframe(headers=STATS_HEADERS, interactive=False, elem_id="live-stats")

    def refresh() -> list[list]:
        return stats_rows(ctx)

    # Filled on page load and on every tick; both private (a callable `value=` would add a public endpoint).
    demo.load(refresh, outputs=table, queue=False, api_visibility="private", show_progress="hidden")
    gr.Timer(STATS_REFRESH_SECONDS).tick(
        refresh, outputs=table, queue=False, api_visibility="private", show_progress="hidden"
    )


def _find_api(demo: gr.Blocks, api_name: str):
    for fn in demo.fns.values():
        if fn.api_name == api_name:
            return fn.fn
    raise LookupError(f"the app has no {api_name!r} endpoint")


def launch_options(demo: gr.Blocks, settings: OpsSettings) -> dict[str, Any]:
    """``demo.launch`` keywords: the upload limit, a plain ``GET /healthz`` route (the ``health`` endpoint's
    JSON) and a background sweep of the empty folders Gradio leaves behind in its cache."""
    health = _find_api(demo, "health")
    frequency, age = settings.delete_cache

    async def healthz(request: Request) -> JSONResponse:
        return JSONResponse(health())

    @contextlib.asynccontextmanager
    async def sweep_cache_folders(app):
        async def loop():
            while True:
                await asyncio.sleep(frequency)
                try:
                    await asyncio.to_thread(sweep_empty_dirs, get_upload_folder(), age)
                except Exception as err:  # noqa: BLE001 - a failed sweep is retried next time, never fatal
                    log.warning("cache folder sweep failed: %s", err)

        task = asyncio.create_task(loop())
        try:
            yield
        finally:
            task.cancel()

    return {
        "max_file_size": settings.max_file_size,
        "app_kwargs": {
            "routes": [Route("/healthz", healthz, methods=["GET"])],
            "lifespan": sweep_cache_folders,
        },
    }
