"""Stop sampling for a request nobody waits for any more.

Gradio runs a handler in a worker thread, which it cannot interrupt: when a browser tab closes or an API
client cancels its job, the queue marks the event dead (or cancels its task) but the thread goes on
sampling, holding the model-run slot until the current model finishes — a minute or more for a large model
at report settings. The step callback asks :func:`raise_if_abandoned` at every sampling step, so the run
stops at the next step and the slot frees within a step's time.
"""

from __future__ import annotations

from mmdemo.runtime import RequestCancelled


def request_abandoned() -> bool:
    """Whether the Gradio event this thread is running for lost its client or was cancelled.

    Reads Gradio's queue (``active_jobs`` and the event's task), the same state its own disconnect and
    ``/cancel`` handling change; False outside a Gradio event.
    """
    try:
        from gradio.context import LocalContext

        blocks, event_id = LocalContext.blocks.get(None), LocalContext.event_id.get(None)
        queue = getattr(blocks, "_queue", None)
        if queue is None or event_id is None:
            return False
        for job in list(queue.active_jobs):
            for event in job or []:
                if event._id == event_id and not event.alive:  # the client's stream closed
                    return True
        for task in list(queue._asyncio_tasks):  # the API client's /cancel cancels the event's task
            if task.get_name().endswith(f"<gradio-sep>{event_id}") and task.cancelling():
                return True
    except (AttributeError, RuntimeError):  # another Gradio version, or the set changed while read
        return False
    return False


def raise_if_abandoned() -> None:
    if request_abandoned():
        raise RequestCancelled("the client went away; sampling stopped")
