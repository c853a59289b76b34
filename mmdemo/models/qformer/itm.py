"""BLIP-2 stage 1's image-text matching (ITM) head, scoring a caption against a picture for the Q-Former captioners.

``Salesforce/blip2-itm-vit-g`` (a transformers ``Blip2ForImageTextRetrieval``) ends in an ITM head: the 32 queries
and the caption's tokens run through the stage-1 Q-Former together, each query output goes through a
``Linear(768, 2)``, and the mean of those logits says "match" or "no match". Both Q-Former captioners take their
frozen ViT trunk from that same checkpoint, so the matcher here reuses the captioner's cached trunk output
(:meth:`~mmdemo.models.qformer.network._QFormerNetwork.encode_images`) and holds only what comes after it: the
checkpoint's own ViT output LayerNorm (the captioners fine-tune theirs), queries, text embeddings, Q-Former and
ITM head, with the checkpoint's BERT tokenizer. It exists only where that checkpoint is on disk with its
tokenizer files (full weights); the demo weights have no such head, and their candidates carry no match score.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from mmdemo.models.qformer.network import _rebuild_nonpersistent_buffers

# The checkpoint's keys the matcher keeps, and their names here.
_KEPT = {
    "vision_model.post_layernorm.": "post_layernorm.",
    "query_tokens": "query_tokens",
    "embeddings.": "embeddings.",
    "qformer.": "qformer.",
    "itm_head.": "itm_head.",
}
_TOKENIZER_FILES = ("tokenizer.json", "vocab.txt")


class ImageTextMatcher(nn.Module):
    """P(caption matches picture) from BLIP-2's ITM head, on ViT trunk features (before the output LayerNorm).

    Args:
        config: the checkpoint's ``Blip2Config``.
        tokenizer: its BERT tokenizer.
    """

    def __init__(self, config: Any, tokenizer: Any):
        super().__init__()
        from transformers.models.blip_2.modeling_blip_2 import Blip2QFormerModel, Blip2TextEmbeddings

        qformer = config.qformer_config
        self.post_layernorm = nn.LayerNorm(
            config.vision_config.hidden_size, eps=config.vision_config.layer_norm_eps
        )
        self.query_tokens = nn.Parameter(torch.zeros(1, config.num_query_tokens, qformer.hidden_size))
        self.embeddings = Blip2TextEmbeddings(qformer)
        self.qformer = Blip2QFormerModel(qformer)
        self.itm_head = nn.Linear(qformer.hidden_size, 2)
        self.tokenizer = tokenizer
        self.max_text_tokens = int(getattr(qformer, "max_position_embeddings", 512))

    @classmethod
    def from_folder(cls, folder: str | Path, device: str | torch.device = "cpu") -> ImageTextMatcher | None:
        """The matcher of a ``Blip2ForImageTextRetrieval`` folder, strictly; ``None`` when the folder lacks its
        config, an ITM head or tokenizer files (then there is no match score to show, and nothing is guessed)."""
        from transformers import BertTokenizerFast, Blip2Config

        from mmdemo.weights import load_state_dict

        folder = Path(folder)
        files = sorted(folder.glob("model*.safetensors"))
        if not (folder / "config.json").is_file() or not files:
            return None
        if not any((folder / name).is_file() for name in _TOKENIZER_FILES):
            return None
        state: dict[str, torch.Tensor] = {}
        for path in files:
            state.update(load_state_dict(path))
        if "itm_head.weight" not in state:
            return None
        kept = {
            new + key.removeprefix(old): tensor.float()
            for key, tensor in state.items()
            for old, new in _KEPT.items()
            if key.startswith(old)
        }
        tokenizer = BertTokenizerFast.from_pretrained(str(folder), local_files_only=True)
        with torch.device("meta"):
            matcher = cls(Blip2Config.from_pretrained(str(folder)), tokenizer)
        matcher = matcher.to_empty(device=device)
        matcher.load_state_dict(kept, strict=True)  # every kept tensor used, every parameter filled
        with torch.no_grad():
            _rebuild_nonpersistent_buffers(matcher)  # the text position ids, which no checkpoint holds
        return matcher.eval()

    @torch.no_grad()
    def probabilities(self, trunk_features: torch.Tensor, captions: list[str]) -> list[float]:
        """P(match) of ``captions[i]`` with row ``i`` of ``trunk_features`` (B, patches + 1, vision width)."""
        device = self.itm_head.weight.device
        image_embeds = self.post_layernorm(trunk_features.to(device, torch.float32))
        text = self.tokenizer(
            list(captions),
            padding=True,
            truncation=True,
            max_length=self.max_text_tokens,
            return_tensors="pt",
        ).to(device)
        queries = self.query_tokens.expand(image_embeds.shape[0], -1, -1)
        attention = torch.cat(
            [text["attention_mask"].new_ones(queries.shape[:2]), text["attention_mask"]], dim=1
        )
        hidden = self.qformer(
            query_embeds=self.embeddings(input_ids=text["input_ids"], query_embeds=queries),
            query_length=queries.shape[1],
            attention_mask=attention,
            encoder_hidden_states=image_embeds,
        ).last_hidden_state
        logits = self.itm_head(hidden[:, : queries.shape[1]]).mean(dim=1)  # (B, 2): no match, match
        return logits.softmax(-1)[:, 1].tolist()
