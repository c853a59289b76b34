"""Corpus and per-image BLEU for the captioners, computed with sacrebleu.

Usage::

    python -m mmdemo.eval.bleu --hyps H.csv --refs captions.txt [--standard]

prints one JSON object, ``{"bleu1": .., "bleu2": .., "bleu3": .., "bleu4": .., "n": ..}``, on a
0-100 scale. ``H.csv`` is an ``image,caption`` CSV, one row per image, read as people publish such files
(header or none, BOM, CRLF, blank lines, a caption broken over lines without quotes; every repair is
reported on stderr with its line number, see :func:`load_hypotheses`);
``captions.txt`` is a Flickr8k captions file (``image,caption`` header, several rows per image, read
by :mod:`mmdemo.data.flickr8k`), or the dataset folder holding it.
Every hypothesis is scored against all references of its image.

Report settings (the default)
-----------------------------
The course report scored its captioners with NLTK's
``corpus_bleu(refs, hyps, weights, smoothing_function=SmoothingFunction().method1)`` on
whitespace-split captions. BLEU-n here is the cumulative score with uniform weights ``1/n`` over
orders ``1..n``, and every piece of the computation is sacrebleu's
(``sacrebleu.metrics.BLEU(tokenize="none", lowercase=False, smooth_method="floor",
smooth_value=0.1)``):

* Tokens. ``tokenize="none"`` leaves the line untouched and sacrebleu then takes ``str.split()``,
  so the tokens are exactly NLTK's ``caption.split()`` (any run of whitespace, newlines included,
  separates tokens; nothing else does). Case is kept.
* Clipped counts. Both clip each hypothesis n-gram count by its largest count in any one reference.
* Brevity penalty. Both take, per hypothesis, the reference length closest to the hypothesis
  length (ties go to the shorter reference), sum those and the hypothesis lengths over the corpus,
  and use ``exp(1 - r / c)`` when ``c < r`` (0 when ``c == 0``).
* Smoothing. NLTK's method1 replaces a corpus precision ``0 / d`` by ``0.1 / d`` for every order
  with no match and leaves the others alone; sacrebleu's ``floor`` with value 0.1 does the same
  (``0.1 / total``). With no unigram match at all both return 0.
* The one difference, closed here. NLTK's ``modified_precision`` uses ``max(1, count)`` as each
  *sentence's* denominator, so a hypothesis shorter than ``n`` tokens (or an empty one) still adds
  1 to the order-``n`` total; sacrebleu adds 0, and if no hypothesis reaches ``n`` tokens it stops
  and returns 0 where NLTK returns a smoothed value. We therefore take per-segment statistics from
  sacrebleu (``BLEU.sentence_score``), apply NLTK's per-sentence ``max(1, .)`` to the totals, sum
  them, and let sacrebleu's ``BLEU.compute_bleu`` turn them into the score. When every hypothesis
  has at least ``n`` tokens this is exactly ``BLEU(...).corpus_score(...)`` with the settings
  above.

The results agree with NLTK 3.10 to about 1e-12 (floating-point summation order differs).
Note: the original author's scoring code that we could read weighted BLEU-3 by
``(0.33, 0.33, 0.33, 0)`` rather than ``1/3`` each; the specification asks for uniform weights,
which gives a BLEU-3 about 2 % (relative) lower at the report's score levels.

Standard settings (``--standard``)
----------------------------------
Adds ``standard_bleu1`` .. ``standard_bleu4``: sacrebleu's defaults (13a tokenisation, case kept,
``exp`` smoothing, no effective order) with ``max_ngram_order=n`` for BLEU-n, so
``standard_bleu4`` equals ``sacrebleu.corpus_bleu(hyps, refs).score``; plus
``standard_signature``, sacrebleu's reproducibility signature of the BLEU-4 metric.
"""

from __future__ import annotations

import argparse
import csv
import json
import re
import sys
from collections.abc import Sequence, Set
from pathlib import Path

from sacrebleu.metrics import BLEU

from mmdemo.data.flickr8k import load_flickr8k

MAX_ORDER = 4  # BLEU-1..4, as in the report's tables
REPORT_EPSILON = 0.1  # NLTK SmoothingFunction's default epsilon, used by method1
_SHOW_AT_MOST = 5  # how many offending image names an error message lists


# ---------------------------------------------------------------------------
# Scoring
# ---------------------------------------------------------------------------


def _percent(score: float) -> float:
    """sacrebleu's score as a plain float, never above 100.

    sacrebleu averages logarithms of percentages, so a perfect match comes out as
    100.00000000000004; BLEU cannot exceed 100, and JSON readers should not see it do so.
    """
    return min(float(score), 100.0)


def _check_inputs(hypotheses: Sequence[str], references: Sequence[Sequence[str | None]]) -> None:
    """Raise unless there is at least one hypothesis, each a string with at least one reference."""
    if isinstance(hypotheses, str):
        raise TypeError("hypotheses must be a list of strings, not one string")
    if len(hypotheses) == 0:
        raise ValueError("no hypotheses to score")
    if len(hypotheses) != len(references):
        raise ValueError(
            f"{len(hypotheses)} hypotheses but {len(references)} reference lists: pass one list of "
            "references per hypothesis"
        )
    for i, (hyp, refs) in enumerate(zip(hypotheses, references)):
        if not isinstance(hyp, str):
            raise TypeError(f"hypothesis {i} is {type(hyp).__name__}, not str")
        if isinstance(refs, str):
            raise TypeError(f"references of hypothesis {i} must be a list of strings, not one string")
        if not any(ref is not None for ref in refs):
            raise ValueError(f"hypothesis {i} has no reference")


def segment_statistics(
    hypotheses: Sequence[str], references: Sequence[Sequence[str | None]]
) -> list[tuple[int, int, list[int], list[int]]]:
    """Per hypothesis ``(hyp_len, ref_len, correct, total)``, the statistics NLTK's ``corpus_bleu`` sums.

    ``correct[k]`` / ``total[k]`` are the clipped matches and hypothesis n-grams of order ``k + 1``.
    Summing any multiset of these rows and passing the sums to :func:`scores_from_statistics` gives that
    corpus's BLEU: the bootstrap resamples images this way without recounting n-grams.
    """
    # sentence_score only serves to extract one segment's statistics; effective_order does not
    # change them, it just keeps sacrebleu from warning about sentence-level BLEU on every call.
    counter = BLEU(
        tokenize="none",
        lowercase=False,
        max_ngram_order=MAX_ORDER,
        effective_order=True,
        # Flickr8k captions end in " ." by construction; sacrebleu's "looks tokenised" warning
        # is noise here.
        force=True,
    )
    rows = []
    for hyp, refs in zip(hypotheses, references):
        seg = counter.sentence_score(hyp, [ref for ref in refs if ref is not None])
        # NLTK's modified_precision: the per-sentence denominator is max(1, count), so a
        # hypothesis shorter than k + 1 tokens still counts once (see the module docstring).
        total = [max(1, seg.totals[k]) for k in range(MAX_ORDER)]
        rows.append((seg.sys_len, seg.ref_len, list(seg.counts[:MAX_ORDER]), total))
    return rows


def _report_stats(
    hypotheses: Sequence[str], references: Sequence[Sequence[str | None]]
) -> tuple[int, int, list[int], list[int]]:
    """Corpus statistics ``(hyp_len, ref_len, correct, total)`` as NLTK's ``corpus_bleu`` sums them."""
    hyp_len = ref_len = 0
    correct = [0] * MAX_ORDER
    total = [0] * MAX_ORDER
    for seg_hyp_len, seg_ref_len, seg_correct, seg_total in segment_statistics(hypotheses, references):
        hyp_len += seg_hyp_len
        ref_len += seg_ref_len
        for k in range(MAX_ORDER):
            correct[k] += seg_correct[k]
            total[k] += seg_total[k]
    return hyp_len, ref_len, correct, total


def scores_from_statistics(stats: tuple[int, int, Sequence[int], Sequence[int]]) -> dict[str, float]:
    """BLEU-1..4 (cumulative, uniform weights, method1 smoothing) from summed corpus statistics."""
    hyp_len, ref_len, correct, total = stats
    scores = {}
    for n in range(1, MAX_ORDER + 1):
        score = BLEU.compute_bleu(
            correct=list(correct[:n]),  # copies: compute_bleu may modify its lists in place
            total=list(total[:n]),
            sys_len=hyp_len,
            ref_len=ref_len,
            smooth_method="floor",
            smooth_value=REPORT_EPSILON,
            effective_order=False,
            max_ngram_order=n,
        )
        scores[f"bleu{n}"] = _percent(score.score)
    return scores


def _reference_streams(references: Sequence[Sequence[str | None]]) -> list[list[str | None]]:
    """Transpose per-hypothesis reference lists into sacrebleu's reference streams.

    Shorter lists are padded with ``None``, which sacrebleu drops. Never pad with ``""``: an empty
    reference has length 0, which becomes the closest reference length for any hypothesis shorter
    than half its real references, so the brevity penalty silently disappears (and the "number of
    references" in the signature is wrong).
    """
    width = max(len(refs) for refs in references)
    return [[refs[k] if k < len(refs) else None for refs in references] for k in range(width)]


def _standard_scores(
    hypotheses: Sequence[str], references: Sequence[Sequence[str | None]]
) -> dict[str, float | str]:
    """sacrebleu's default BLEU (13a, exp smoothing) for max orders 1..4, plus BLEU-4's signature."""
    streams = _reference_streams(references)
    scores: dict[str, float | str] = {}
    for n in range(1, MAX_ORDER + 1):
        metric = BLEU(max_ngram_order=n, force=True)  # force only silences a warning
        scores[f"standard_bleu{n}"] = _percent(metric.corpus_score(list(hypotheses), streams).score)
        if n == MAX_ORDER:
            scores["standard_signature"] = str(metric.get_signature())
    return scores


def corpus_bleu_scores(
    hypotheses: Sequence[str],
    references: Sequence[Sequence[str | None]],
    standard: bool = False,
) -> dict[str, float | int | str]:
    """Corpus BLEU-1..4 with the report's settings (see the module docstring).

    Args:
        hypotheses: one generated caption per image.
        references: for each hypothesis, the list of its reference captions; the lists may differ in
            length, and ``None`` entries are ignored (an empty string is a real, empty reference).
        standard: also return sacrebleu's default BLEU under ``standard_bleu1`` .. ``standard_bleu4``
            and ``standard_signature``.

    Returns:
        ``{"bleu1": .., "bleu2": .., "bleu3": .., "bleu4": .., "n": len(hypotheses)}`` on a 0-100
        scale, plus the standard keys when asked.

    Raises:
        ValueError: no hypotheses, a length mismatch, or a hypothesis without any reference.
        TypeError: a hypothesis that is not a string, or one string where a list is expected.
    """
    _check_inputs(hypotheses, references)
    result: dict[str, float | int | str] = dict(scores_from_statistics(_report_stats(hypotheses, references)))
    result["n"] = len(hypotheses)
    if standard:
        result.update(_standard_scores(hypotheses, references))
    return result


def sentence_bleu_scores(hypothesis: str, references: Sequence[str | None]) -> dict[str, float]:
    """BLEU-1..4 of one caption against its references, with the same settings as the corpus score.

    This is NLTK's ``sentence_bleu`` with method1 smoothing (a one-sentence corpus), which is what
    the app shows per image. Returns ``{"bleu1": .., .., "bleu4": ..}`` on a 0-100 scale.
    """
    _check_inputs([hypothesis], [references])
    return scores_from_statistics(_report_stats([hypothesis], [references]))


# ---------------------------------------------------------------------------
# Files
# ---------------------------------------------------------------------------

# An image file name as datasets name them (no spaces, no path separators, an image extension). Used to
# tell a new row from a continuation line when no reference set says which names exist.
_IMAGE_NAME = re.compile(r"[^\s,/\\]+\.(?:jpe?g|png|gif|bmp|webp|tiff?)", re.IGNORECASE)
_HEADER = ["image", "caption"]


def _name_list(names: Sequence[str]) -> str:
    """``a, b, c`` for the first few names, with how many more were left out."""
    shown = ", ".join(names[:_SHOW_AT_MOST])
    more = len(names) - _SHOW_AT_MOST
    return shown + (f" (and {more} more)" if more > 0 else "")


class _CountingLines:
    """The file's physical lines fed to ``csv.reader`` one at a time, remembering which ones each record used.

    csv.reader pulls exactly the lines one record needs, so after each record ``take()`` returns its first
    line number and its raw text (quotes included): what a continuation line contributes, and what an error
    message points at.
    """

    def __init__(self, text: str) -> None:
        # \r\n, \n and \r all end a line (files written on Windows or old Macs); nothing else does, so a
        # caption keeps any other control character it contains.
        self._lines = re.findall(r"[^\r\n]*(?:\r\n|\n|\r)|[^\r\n]+$", text)
        self._next = 0
        self._first = 0

    def __iter__(self) -> _CountingLines:
        return self

    def __next__(self) -> str:
        if self._next >= len(self._lines):
            raise StopIteration
        self._next += 1
        return self._lines[self._next - 1]

    def take(self) -> tuple[int, str]:
        first, self._first = self._first, self._next
        return first + 1, "".join(self._lines[first : self._next])


def _is_image_name(cell: str, known_images: Set[str] | None) -> bool:
    """A reference image's name, or anything shaped like an image file name (an unknown image is reported
    later, by name, rather than glued to the caption above it)."""
    name = cell.strip()
    return bool(_IMAGE_NAME.fullmatch(name)) or (known_images is not None and name in known_images)


def _read_image_caption_csv(
    path: Path, known_images: Set[str] | None = None, notices: list[str] | None = None
) -> list[tuple[int, str, str]]:
    """``(line, image, caption)`` rows of a hypotheses file written by us or by someone else.

    Accepted as published outputs files come: a header ``image,caption`` or none; a UTF-8 byte-order mark;
    CRLF or CR line ends; blank lines; quoted captions with commas, doubled quotes or embedded newlines (the
    csv module); unquoted commas inside a caption (the caption is everything after the first comma); and a
    caption broken over several lines without quotes: a line that does not start with an image name
    continues the caption above it and is joined to it with a space. An image name is one of
    ``known_images`` (the reference images, when given) or anything shaped like an image file name.
    Everything that was repaired is described in ``notices`` with its line number.

    Raises:
        ValueError: naming the line, for what cannot be read one way only: a first data line that is
            not an image row, an image name without a caption, an empty image name (a missing name or a
            line broken before a comma?), a quote left open to the end of the file.
    """
    notices = notices if notices is not None else []
    try:
        # utf-8-sig: spreadsheet tools often prepend a byte-order mark, which would spoil the header.
        text = path.read_bytes().decode("utf-8-sig")
    except OSError as err:
        raise ValueError(f"cannot read {path}: {err.strerror or err}") from err
    except UnicodeDecodeError as err:
        raise ValueError(f"{path} is not a UTF-8 text file: {err}") from err
    lines = _CountingLines(text)
    reader = csv.reader(lines, strict=True)
    rows: list[tuple[int, str, str]] = []
    seen_header = seen_first = False
    while True:
        try:
            record = next(reader)
        except StopIteration:
            break
        except csv.Error as err:
            line, _ = lines.take()
            hint = " (a quote opened there is never closed)" if "end of data" in str(err) else ""
            raise ValueError(
                f"{path}, line {line}: {err}{hint}; quote a whole caption that holds quotes, doubling the "
                'quotes inside it: img.jpg,"a ""red"" kite"'
            ) from err
        line, raw = lines.take()
        if not any(cell.strip() for cell in record):
            continue  # blank line
        first = record[0].strip()
        if not seen_first:
            seen_first = True
            if [cell.strip().lower() for cell in record] == _HEADER:
                seen_header = True
                continue
            if not _is_image_name(first, known_images):
                raise ValueError(
                    f"{path}, line {line}: expected the header 'image,caption' or a row image,caption; "
                    f"{first!r} is not an image name"
                )
            notices.append(f"{path}: no 'image,caption' header; line {line} is read as the first caption")
        if _is_image_name(first, known_images):
            if len(record) < 2:
                raise ValueError(
                    f"{path}, line {line}: image {first!r} without a caption (expected image,caption)"
                )
            caption = ",".join(record[1:])
            if len(record) > 2:
                notices.append(
                    f"{path}, line {line}: unquoted comma(s) in the caption of {first}, kept in it"
                )
            rows.append((line, first, caption))
            continue
        if not first and len(record) >= 2:
            # ",a dog": a row whose image name is missing, or a caption broken just before a comma?
            raise ValueError(f"{path}, line {line}: empty image name (or a line break before a comma)")
        if not rows:
            raise ValueError(
                f"{path}, line {line}: {first!r} is not an image name, and no caption above it to continue"
                + ("" if seen_header else " (expected the header 'image,caption')")
            )
        prev_line, image, caption = rows[-1]
        rows[-1] = (prev_line, image, f"{caption} {raw.strip()}")
        notices.append(
            f"{path}, line {line}: does not start with an image name; joined to the caption of {image} "
            f"(line {prev_line}) as an unquoted line break"
        )
    if not seen_first:
        raise ValueError(f"{path} is empty: expected a header 'image,caption' and one row per caption")
    return rows


def load_hypotheses(
    path: str | Path, known_images: Set[str] | None = None, notices: list[str] | None = None
) -> dict[str, str]:
    """Generated captions from an ``image,caption`` file, in file order: ``{image: caption}``.

    See :func:`_read_image_caption_csv` for what is accepted; ``known_images`` (the reference images)
    tells new rows from continuation lines. An image listed twice keeps its last caption, and
    ``notices`` says so with both line numbers. A caption may be empty: a model that generated nothing is
    scored, not rejected.

    Raises:
        ValueError: unreadable or ambiguous file (the message names the line), or no rows.
    """
    path = Path(path)
    notices = notices if notices is not None else []
    rows = _read_image_caption_csv(path, known_images, notices)
    if not rows:
        raise ValueError(f"{path} has a header but no hypotheses")
    hyps: dict[str, str] = {}
    first_line: dict[str, int] = {}
    for line, image, caption in rows:
        if image in hyps:
            notices.append(
                f"{path}, line {line}: {image} again (also on line {first_line[image]}); the last caption is kept"
            )
        first_line.setdefault(image, line)
        hyps[image] = caption
    return hyps


def load_references(path: str | Path) -> dict[str, list[str]]:
    """Reference captions from a Flickr8k ``captions.txt`` or a folder holding one.

    Parsed by :func:`mmdemo.data.flickr8k.load_flickr8k`, the project's one Flickr8k reader (only
    local paths here: a missing path is an error, never a Hugging Face download). Returns
    ``{image: [caption, ...]}`` with images in order of first appearance and captions in file order,
    whitespace-stripped (which changes no token).

    Raises:
        ValueError: a missing path or a malformed or empty captions file.
    """
    path = Path(path)
    if not path.exists():
        raise ValueError(f"{path}: no such file or folder")
    try:
        corpus = load_flickr8k(path)
    except OSError as err:
        raise ValueError(f"cannot read references from {path}: {err}") from err
    except UnicodeDecodeError as err:
        raise ValueError(f"{path} is not a UTF-8 CSV file: {err}") from err
    if not corpus.captions:
        raise ValueError(f"{path} has no reference captions")
    return corpus.captions


def load_pairs(
    hyps_path: str | Path, refs_path: str | Path, notices: list[str] | None = None
) -> tuple[list[str], list[str], list[list[str]]]:
    """``(images, hypotheses, references)`` of a hypotheses file and a Flickr8k captions file, aligned.

    What had to be repaired in the hypotheses file is appended to ``notices`` (see :func:`load_hypotheses`).

    Raises:
        ValueError: any problem with either file, or hypotheses naming images without references.
    """
    refs = load_references(refs_path)
    hyps = load_hypotheses(hyps_path, known_images=refs.keys(), notices=notices)
    unknown = [image for image in hyps if image not in refs]
    if unknown:
        raise ValueError(
            f"{len(unknown)} of {len(hyps)} hypothesis image(s) have no references in {refs_path}: "
            f"{_name_list(unknown)}"
        )
    images = list(hyps)
    return images, [hyps[i] for i in images], [refs[i] for i in images]


def evaluate_files(
    hyps_path: str | Path, refs_path: str | Path, standard: bool = False, notices: list[str] | None = None
) -> dict:
    """Score a hypotheses file against a Flickr8k captions file; see :func:`corpus_bleu_scores`.

    Raises:
        ValueError: any problem with either file, or hypotheses naming images without references.
    """
    _, hypotheses, references = load_pairs(hyps_path, refs_path, notices)
    return corpus_bleu_scores(hypotheses, references, standard=standard)


# ---------------------------------------------------------------------------
# Command line
# ---------------------------------------------------------------------------


class _OneLineErrorParser(argparse.ArgumentParser):
    """An ArgumentParser whose errors are one line on stderr (exit status 2), without the usage."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """Parse the command line; missing files raise ``ValueError``."""
    parser = _OneLineErrorParser(
        prog="python -m mmdemo.eval.bleu",
        description="Corpus BLEU-1..4 of generated captions against Flickr8k references, as JSON.",
    )
    parser.add_argument("--hyps", type=Path, required=True, help="image,caption CSV of generated captions")
    parser.add_argument(
        "--refs", type=Path, required=True, help="Flickr8k captions.txt (image,caption), or its folder"
    )
    parser.add_argument(
        "--standard",
        action="store_true",
        help="also report sacrebleu's default 13a-tokenised BLEU (standard_bleu1..4, standard_signature)",
    )
    args = parser.parse_args(argv)
    check_hyps_refs(args)
    return args


def check_hyps_refs(args: argparse.Namespace) -> None:
    """``--hyps`` is a file and ``--refs`` a file or folder (the command-line tools here and in captions.py)."""
    if not args.hyps.is_file():
        raise ValueError(f"--hyps {args.hyps}: no such file")
    if not args.refs.exists():
        raise ValueError(f"--refs {args.refs}: no such file or folder")


def main(argv: Sequence[str] | None = None) -> int:
    """Print the scores as JSON; return 0, or 2 after a one-line error message."""
    try:
        args = parse_args(argv)
        notices: list[str] = []
        scores = evaluate_files(args.hyps, args.refs, standard=args.standard, notices=notices)
    except ValueError as err:
        print(f"python -m mmdemo.eval.bleu: error: {err}", file=sys.stderr)
        return 2
    for notice in notices:  # what was repaired in the hypotheses file, line by line
        print(f"python -m mmdemo.eval.bleu: note: {notice}", file=sys.stderr)
    print(json.dumps(scores))
    return 0


if __name__ == "__main__":
    sys.exit(main())
