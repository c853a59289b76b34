"""Learn a BERT WordPiece vocabulary (lower-cased, plus ``[DEC]``) from a captions folder (Flickr8k layout).

``python train/build_wordpiece_vocab.py --data DIR --out DIR [--vocab-size 400]`` writes a ``BertTokenizer``
that stands in for bert-base-uncased's vocabulary in the offline ``qformer-bert`` demo
(:func:`mmdemo.models.qformer.network.build_shapes_wordpiece`) and prints a JSON summary.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence

from mmdemo.data.flickr8k import load_flickr8k
from mmdemo.models.qformer.network import build_shapes_wordpiece


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", required=True, help="folder with captions.txt (Flickr8k layout)")
    parser.add_argument("--out", required=True)
    parser.add_argument("--vocab-size", type=int, default=400)
    args = parser.parse_args(argv)
    corpus = load_flickr8k(args.data)
    captions = [c for name in corpus.images for c in corpus.captions[name]]
    tokenizer = build_shapes_wordpiece(captions, args.out, vocab_size=args.vocab_size)
    print(json.dumps({"out": args.out, "entries": len(tokenizer), "captions": len(captions)}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
