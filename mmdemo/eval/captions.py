"""The captioning metrics of the field, with 95 % bootstrap intervals, as one JSON object.

Usage::

    python -m mmdemo.eval.captions --hyps H.csv --refs captions.txt [--metrics bleu,meteor,rouge_l,cider]
        [--resamples 1000] [--seed 0]

prints ``{"bleu1".."bleu4", "meteor", "rouge_l", "cider", "n", "intervals": {key: [low, high]}, ...}``,
every score on a 0-100 scale (CIDEr-D as papers print it, i.e. 100 x pycocoevalcap's value).

* ``bleu``: the report's BLEU-1..4 (:mod:`mmdemo.eval.bleu`: whitespace tokens, case kept, all
  references, NLTK method1 smoothing), on the captions as written; the default metric of
  ``train/evaluate_captioner.py``.
* ``meteor``, ``rouge_l``, ``cider``: the COCO caption evaluation code, ``pycocoevalcap`` (METEOR 1.5,
  ROUGE-L with beta 1.2, CIDEr-D with sigma 6 and clipping), on captions tokenised the way COCO does it:
  Stanford's PTB tokenizer, lower-cased, punctuation removed. METEOR and the tokenizer run on Java
  (``java`` on ``PATH``; any JRE 8 or newer).
* SPICE is not offered: it parses captions into scene graphs with Stanford CoreNLP 3.6.0, whose models
  (about 1 GB) pycocoevalcap downloads on first use, which an offline machine cannot do.

Intervals (:mod:`mmdemo.eval.bootstrap`) resample images: BLEU from resampled n-gram statistics and
CIDEr-D with document frequencies recomputed on the resampled references, METEOR by METEOR's own pooling
of the resampled images' statistics (all corpus-level, as the scores are; METEOR with at most 200
resamples, each a round trip to Java); ROUGE-L, a mean of per-image
scores, as a mean.

Files are read as :mod:`mmdemo.eval.bleu` reads them (published outputs files with repairs reported on
stderr).
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from mmdemo.eval import bleu
from mmdemo.eval.bootstrap import RESAMPLES, Interval, bootstrap_interval, mean_interval

METRICS = ("bleu", "meteor", "rouge_l", "cider")
JAVA_METRICS = ("meteor", "rouge_l", "cider")  # the PTB tokenizer they share needs Java
METEOR_RESAMPLES = 200  # each METEOR resample is a Java round trip over every image
CIDER_SIGMA = 6.0  # CIDEr-D's length penalty width (pycocoevalcap's default)
CIDER_ORDER = 4
SPICE_REASON = (
    "SPICE is not offered: it needs Stanford CoreNLP 3.6.0's models (about 1 GB), which pycocoevalcap "
    "downloads on first use; this evaluation runs offline"
)


def java_missing() -> str | None:
    """Why the Java metrics cannot run here, or ``None`` when ``java`` is on ``PATH``."""
    if shutil.which("java"):
        return None
    return (
        "METEOR, ROUGE-L and CIDEr-D need Java for the PTB tokenizer and METEOR 1.5: install a JRE "
        "(Debian: apt-get install default-jre-headless) or leave them out with --metrics bleu"
    )


def parse_metrics(text: str | Sequence[str]) -> list[str]:
    """``"bleu,cider"`` -> ``["bleu", "cider"]``; unknown names (and SPICE) are a clear error."""
    names = [m.strip().lower() for m in (text.split(",") if isinstance(text, str) else text) if m.strip()]
    if not names:
        raise ValueError(f"no metric named; choose from {', '.join(METRICS)}")
    for name in names:
        if name == "spice":
            raise ValueError(SPICE_REASON)
        if name not in METRICS:
            raise ValueError(f"unknown metric {name!r}; choose from {', '.join(METRICS)}")
    return list(dict.fromkeys(names))


# ---------------------------------------------------------------------------
# COCO tokenisation and CIDEr-D on resamples
# ---------------------------------------------------------------------------


def ptb_tokenize(groups: Sequence[Sequence[str]]) -> list[list[str]]:
    """COCO's tokenisation (Stanford PTB tokenizer via pycocoevalcap): lower case, punctuation removed."""
    from pycocoevalcap.tokenizer.ptbtokenizer import PTBTokenizer

    tokenized = PTBTokenizer().tokenize(
        {i: [{"caption": text} for text in group] for i, group in enumerate(groups)}
    )
    return [tokenized[i] for i in range(len(groups))]


def meteor_scores(
    hypotheses: Sequence[str],
    references: Sequence[Sequence[str]],
    *,
    resamples: int = 0,
    seed: int = 0,
) -> tuple[float, np.ndarray, Interval | None]:
    """METEOR 1.5 (pycocoevalcap, on Java) of tokenised captions, on a 0-1 scale.

    Returns the corpus score (METEOR pools its per-image matching statistics before scoring, as COCO reports
    it), every image's own score, and the corpus score's bootstrap interval: each resample hands the
    resampled images' statistics back to METEOR's own pooling (its ``EVAL`` command), so the interval is
    corpus-level too. (The pooling is not a plain sum of the statistics, so it is not redone here.) One
    resample is one Java round trip (about 0.2 s for 500 images), hence ``METEOR_RESAMPLES``. Starting Java
    and loading the paraphrase table takes 10-30 s: score everything in one call.
    """
    from pycocoevalcap.meteor.meteor import Meteor

    reason = java_missing()
    if reason:
        raise RuntimeError(reason)
    meteor = Meteor()
    process = meteor.meteor_p

    def evaluate(stats: Sequence[str]) -> tuple[float, list[float]]:
        # The EVAL exchange of pycocoevalcap's compute_score, on statistics we already have.
        process.stdin.write(("EVAL ||| " + " ||| ".join(stats) + "\n").encode())
        process.stdin.flush()
        per = [float(process.stdout.readline().strip()) for _ in stats]
        return float(process.stdout.readline().strip()), per

    try:
        with meteor.lock:
            stats = [meteor._stat(hyp, list(refs)) for hyp, refs in zip(hypotheses, references)]
            score, per_image = evaluate(stats)
            interval = bootstrap_interval(
                lambda idx: evaluate([stats[i] for i in idx])[0], len(stats), resamples=resamples, seed=seed
            )
    finally:
        del meteor  # its __del__ stops the Java process
    return score, np.asarray(per_image, dtype=np.float64), interval


class CiderResampler:
    """CIDEr-D of any resample of the images, from pycocoevalcap's n-gram counts, vectorised.

    pycocoevalcap recomputes every tf-idf vector in Python (about 0.25 s for 500 images), far too slow for
    1000 resamples. The score of a resample only changes through the document frequencies (counted over
    the resampled images' references, repeats included) and the corpus size, so we count n-grams once with
    pycocoevalcap's own ``precook`` and redo the tf-idf arithmetic on sparse matrices. ``score(all images)``
    equals pycocoevalcap's ``Cider`` (a test checks it to 1e-9).
    """

    def __init__(self, hypotheses: Sequence[str], references: Sequence[Sequence[str]]) -> None:
        from pycocoevalcap.cider.cider_scorer import precook
        from scipy import sparse

        vocab: dict[tuple[str, ...], int] = {}
        order: list[int] = []

        def column(ngram: tuple[str, ...]) -> int:
            if ngram not in vocab:
                vocab[ngram] = len(vocab)
                order.append(len(ngram) - 1)
            return vocab[ngram]

        def rows(counts_per_row: list[dict]) -> Any:
            data, cols, ptr = [], [], [0]
            for counts in counts_per_row:
                for ngram, count in counts.items():
                    cols.append(column(ngram))
                    data.append(float(count))
                ptr.append(len(cols))
            return data, cols, ptr

        hyp_counts = [precook(h, CIDER_ORDER) for h in hypotheses]
        ref_counts, ref_image = [], []
        for image, refs in enumerate(references):
            for ref in refs:
                ref_counts.append(precook(ref, CIDER_ORDER))
                ref_image.append(image)
        presence = [
            {g: 1 for counts in (precook(r, CIDER_ORDER) for r in refs) for g in counts}
            for refs in references
        ]
        built = [rows(hyp_counts), rows(ref_counts), rows(presence)]
        width = len(vocab)
        self.hyp, self.ref, self.presence = (
            sparse.csr_matrix((d, c, p), shape=(len(p) - 1, width)) for d, c, p in built
        )
        self.order = sparse.csr_matrix(
            (np.ones(width), (np.arange(width), np.asarray(order, dtype=np.int64))),
            shape=(width, CIDER_ORDER),
        )
        self.ref_image = np.asarray(ref_image, dtype=np.int64)
        self.hyp_of_ref = self.hyp[self.ref_image]  # each reference row beside its image's hypothesis
        unigram = np.asarray(order) == 0
        self.hyp_len = np.asarray(self.hyp[:, unigram].sum(axis=1)).ravel()
        ref_len = np.asarray(self.ref[:, unigram].sum(axis=1)).ravel()
        delta = self.hyp_len[self.ref_image] - ref_len
        self.penalty = np.exp(-(delta**2) / (2 * CIDER_SIGMA**2))
        self.refs_per_image = np.bincount(self.ref_image, minlength=len(references))
        self.n = len(references)

    def per_image(self, weights: np.ndarray) -> np.ndarray:
        """CIDEr-D (pycocoevalcap's scale) of every image when the corpus holds image i ``weights[i]`` times."""
        from scipy import sparse

        document_frequency = self.presence.T @ weights  # references of the resample that hold each n-gram
        idf = math.log(float(weights.sum())) - np.log(np.maximum(1.0, document_frequency))
        scale = sparse.diags(idf)
        hyp_vec, ref_vec, hyp_of_ref_vec = self.hyp @ scale, self.ref @ scale, self.hyp_of_ref @ scale
        hyp_norm = np.sqrt((hyp_vec.multiply(hyp_vec) @ self.order).toarray())
        ref_norm = np.sqrt((ref_vec.multiply(ref_vec) @ self.order).toarray())
        # CIDEr-D clips each hypothesis n-gram's weight at the reference's: sum min(h, r) * r.
        dot = (hyp_of_ref_vec.minimum(ref_vec).multiply(ref_vec) @ self.order).toarray()
        denominator = hyp_norm[self.ref_image] * ref_norm
        cosine = np.divide(dot, denominator, out=dot.copy(), where=denominator != 0)
        per_ref = cosine.mean(axis=1) * self.penalty * 10.0
        return np.bincount(self.ref_image, weights=per_ref, minlength=self.n) / self.refs_per_image

    def score(self, indices: np.ndarray) -> float:
        """Corpus CIDEr-D (pycocoevalcap's scale) of the images ``indices`` (repeats allowed)."""
        weights = np.bincount(indices, minlength=self.n).astype(np.float64)
        return float((self.per_image(weights) * weights).sum() / weights.sum())


# ---------------------------------------------------------------------------
# Scoring
# ---------------------------------------------------------------------------


def caption_metrics(
    hypotheses: Sequence[str],
    references: Sequence[Sequence[str]],
    metrics: Sequence[str] = METRICS,
    *,
    resamples: int = RESAMPLES,
    seed: int = 0,
) -> dict[str, Any]:
    """Scores (0-100) and their 95 % bootstrap intervals for one captioner's outputs.

    Args:
        hypotheses: one caption per image.
        references: the reference captions of each image.
        metrics: any of ``bleu``, ``meteor``, ``rouge_l``, ``cider``.
        resamples: bootstrap resamples (0: no intervals).
        seed: seeds the bootstrap.

    Returns:
        ``{"bleu1".., "meteor", "rouge_l", "cider", "n", "intervals": {key: [low, high]},
        "bootstrap": {...}}`` with the keys of the metrics asked for.

    Raises:
        ValueError: bad inputs (see :func:`mmdemo.eval.bleu.corpus_bleu_scores`) or unknown metrics.
        RuntimeError: Java metrics asked for on a machine without Java.
    """
    metrics = parse_metrics(metrics)
    references = [[r for r in refs if r is not None] for refs in references]
    bleu._check_inputs(hypotheses, references)
    n = len(hypotheses)
    result: dict[str, Any] = {}
    intervals: dict[str, list[float]] = {}
    boot = dict(resamples=resamples, seed=seed)

    if "bleu" in metrics:
        result.update(bleu.corpus_bleu_scores(hypotheses, references))
        stats = bleu.segment_statistics(hypotheses, references)
        table = np.array([[h, r, *c, *t] for h, r, c, t in stats], dtype=np.int64)
        k = bleu.MAX_ORDER

        def resampled_bleu(indices: np.ndarray, order: int) -> float:
            summed = table[indices].sum(axis=0)
            return bleu.scores_from_statistics(
                (int(summed[0]), int(summed[1]), summed[2 : 2 + k].tolist(), summed[2 + k :].tolist())
            )[f"bleu{order}"]

        for order in range(1, k + 1):
            interval = bootstrap_interval(lambda idx, o=order: resampled_bleu(idx, o), n, **boot)
            if interval is not None:
                intervals[f"bleu{order}"] = interval.to_json(2)

    java_metrics = [m for m in metrics if m in JAVA_METRICS]
    if java_metrics:
        reason = java_missing()
        if reason:
            raise RuntimeError(reason)
        tokenized = ptb_tokenize([[h] for h in hypotheses] + [list(refs) for refs in references])
        hyp_tokens = [group[0] for group in tokenized[:n]]
        ref_tokens = tokenized[n:]
        gts = {i: ref_tokens[i] for i in range(n)}
        res = {i: [hyp_tokens[i]] for i in range(n)}
        if "meteor" in metrics:
            meteor_boot = {**boot, "resamples": min(resamples, METEOR_RESAMPLES)}
            score, _, interval = meteor_scores(hyp_tokens, ref_tokens, **meteor_boot)
            result["meteor"] = 100.0 * score
            if interval is not None:
                intervals["meteor"] = [round(100.0 * interval.low, 2), round(100.0 * interval.high, 2)]
        if "rouge_l" in metrics:
            from pycocoevalcap.rouge.rouge import Rouge

            score, per_image = Rouge().compute_score(gts, res)
            result["rouge_l"] = 100.0 * float(score)
            interval = mean_interval(100.0 * np.asarray(per_image), **boot)
            if interval is not None:
                intervals["rouge_l"] = interval.to_json(2)
        if "cider" in metrics:
            from pycocoevalcap.cider.cider import Cider

            score, _ = Cider().compute_score(gts, res)
            result["cider"] = 100.0 * float(score)
            resampler = CiderResampler(hyp_tokens, ref_tokens)
            interval = bootstrap_interval(lambda idx: 100.0 * resampler.score(idx), n, **boot)
            if interval is not None:
                intervals["cider"] = interval.to_json(2)

    result["n"] = n
    result["intervals"] = intervals
    result["bootstrap"] = {"level": 0.95, "resamples": resamples, "seed": seed, "unit": "image"}
    if "meteor" in metrics:
        result["bootstrap"]["meteor_resamples"] = min(resamples, METEOR_RESAMPLES)
    return result


# ---------------------------------------------------------------------------
# Command line
# ---------------------------------------------------------------------------


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = bleu._OneLineErrorParser(
        prog="python -m mmdemo.eval.captions",
        description="BLEU (the report's), METEOR, ROUGE-L and CIDEr-D of generated captions, with 95 % "
        "bootstrap intervals, as JSON. " + SPICE_REASON + ".",
    )
    parser.add_argument("--hyps", type=Path, required=True, help="image,caption file of generated captions")
    parser.add_argument("--refs", type=Path, required=True, help="Flickr8k captions.txt, or its folder")
    parser.add_argument(
        "--metrics", default=",".join(METRICS), help=f"comma-separated, from {', '.join(METRICS)}"
    )
    parser.add_argument("--resamples", type=int, default=RESAMPLES, help="bootstrap resamples (0: none)")
    parser.add_argument("--seed", type=int, default=0, help="seeds the bootstrap")
    args = parser.parse_args(argv)
    args.metrics = parse_metrics(args.metrics)
    if args.resamples < 0:
        raise ValueError(f"--resamples must be >= 0, got {args.resamples}")
    bleu.check_hyps_refs(args)
    return args


def main(argv: Sequence[str] | None = None) -> int:
    prog = "python -m mmdemo.eval.captions"
    try:
        args = parse_args(argv)
        notices: list[str] = []
        _, hypotheses, references = bleu.load_pairs(args.hyps, args.refs, notices)
        for notice in notices:
            print(f"{prog}: note: {notice}", file=sys.stderr)
        scores = caption_metrics(
            hypotheses, references, args.metrics, resamples=args.resamples, seed=args.seed
        )
    except (ValueError, RuntimeError) as err:
        print(f"{prog}: error: {err}", file=sys.stderr)
        return 2
    print(json.dumps(scores))
    return 0


if __name__ == "__main__":
    sys.exit(main())
