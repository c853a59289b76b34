"""Small variations of Gradio components."""

from __future__ import annotations

import gradio as gr


class RawImageInput(gr.Image):
    """An image input that hands the uploaded file's path to our own checks, undecoded.

    ``gr.Image`` decodes uploads itself and fails with a generic "could not preprocess" message on a
    truncated file or a decompression bomb (after decoding up to 178 megapixels). Passing the path on
    lets :func:`mmdemo.inputs.load_image` refuse it with a message the user can act on.
    """

    # Render with the stock Image front end. No __init__ override: Gradio builds the front-end props
    # from the constructor's signature. Create it with type="filepath".
    is_template = True

    def preprocess(self, payload):
        return None if payload is None else payload.path
