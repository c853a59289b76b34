"""Small variations of Gradio components."""

from __future__ import annotations

import gradio as gr


class RawImageInput(gr.Image):
    """An image input that hands the uploaded file's path to our own checks, undecoded.

    ``gr.Image`` decodes uploads itself and fails with a generic "could not preprocess" message on a
    truncated file or a decompression bomb (after decoding up to 178 megapixels). Passing the path on
    lets :func:`mmdemo.inputs.load_image` refuse it with a message the user can act on.
    """

    is_template = True  # render with the stock Image front end

    def __init__(self, **kwargs):
        super().__init__(type="filepath", **kwargs)

    def preprocess(self, payload):
        return None if payload is None else payload.path
