"""Flickr8k-style caption corpora and the report's train/test splits.

A corpus is a list of images, each with one or more reference captions. The on-disk format is the
common Kaggle layout of Flickr8k, which the offline Shapes dataset (``mmdemo.data.shapes``) also
writes::

    DIR/Images/<file>        the pictures
    DIR/captions.txt         CSV with header ``image,caption``; usually 5 rows per image,
                             captions that contain commas, quotes or newlines are CSV-quoted

Image order is the order in which an image *first appears* in ``captions.txt``; the report's splits
are defined on that order, so every function here keeps it.

The report's splits:

* captioning (:func:`captioning_split`): the first caption of each image, first ``int(0.8 * n)``
  images for training, the rest for validation (6472 / 1619 on Flickr8k); BLEU compares each
  generated caption with *all* references of its image (:func:`captioning_val_references`).
* text to image (:func:`text_to_image_split`): the first 7000 images with their first caption train
  the LoRA; the first captions of the remaining 1091 images are the test prompts.
"""

from __future__ import annotations

import csv
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

from PIL import Image

CAPTIONS_FILE = "captions.txt"
IMAGES_DIR = "Images"
CAPTIONS_HEADER = ("image", "caption")

CAPTIONING_TRAIN_FRACTION = 0.8  # report: first 80 % of images train the captioners
LORA_TRAIN_IMAGES = 7000  # report: the first 7000 Flickr8k images train the SDXL LoRA

# "owner/name" as the Hugging Face Hub spells dataset ids.
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


class ImageCaption(NamedTuple):
    """One training or evaluation pair: an image file name and one caption of it."""

    image: str
    caption: str


@dataclass
class CaptionCorpus:
    """Images with their reference captions, in the order of first appearance.

    Args:
        root: The dataset folder (holding ``Images/`` and ``captions.txt``), or ``None`` when only a
            captions file was loaded or the images live in memory (Hugging Face datasets).
        images: Image file names (or, for Hub datasets, synthetic keys), each once, in the order of
            their first row in ``captions.txt``.
        captions: For every name in ``images``, all its captions in file order, whitespace-stripped.
        image_loader: Optional function returning the RGB picture of a name; set by the Hub loader,
            whose images are not files. ``None`` means "open ``root/Images/<name>``".
    """

    root: Path | None
    images: list[str]
    captions: dict[str, list[str]]
    image_loader: Callable[[str], Image.Image] | None = field(default=None, repr=False, compare=False)

    def __len__(self) -> int:
        return len(self.images)

    def image_path(self, name: str) -> Path:
        """Path of image ``name`` inside ``root/Images``; ``ValueError`` when the corpus has no folder."""
        if self.root is None:
            raise ValueError(
                f"this corpus has no image folder, so there is no path for {name!r}; load a folder in "
                f"the Kaggle layout (DIR/{IMAGES_DIR}/ + DIR/{CAPTIONS_FILE}) to get image files"
            )
        images_dir = self.root / IMAGES_DIR
        if not images_dir.is_dir() and (self.root / IMAGES_DIR.lower()).is_dir():
            images_dir = self.root / IMAGES_DIR.lower()
        return images_dir / name

    def has_images(self) -> bool:
        """True when pictures can be opened: an in-memory loader, or an ``Images/`` folder that holds
        the first image (the shared development data ships ``captions.txt`` alone)."""
        if self.image_loader is not None:
            return True
        if self.root is None or not self.images:
            return False
        return self.image_path(self.images[0]).is_file()

    def open_image(self, name: str) -> Image.Image:
        """The picture ``name`` as an RGB ``PIL.Image``, from the loader or from ``image_path(name)``."""
        if name not in self.captions:
            raise KeyError(f"{name!r} is not an image of this corpus")
        if self.image_loader is not None:
            return self.image_loader(name).convert("RGB")
        path = self.image_path(name)
        if not path.is_file():
            raise FileNotFoundError(
                f"image file {path} is missing; download Flickr8k in the Kaggle layout "
                f"(DIR/{IMAGES_DIR}/*.jpg + DIR/{CAPTIONS_FILE}) and pass DIR"
            )
        with Image.open(path) as image:
            return image.convert("RGB")


def read_captions_txt(path: str | Path) -> tuple[list[str], dict[str, list[str]]]:
    """Parse a Flickr8k ``captions.txt``.

    Real CSV parsing: quoted fields may contain commas, doubled quotes (``""``) and newlines. Rows whose
    fields are all blank are skipped; captions are whitespace-stripped. Columns other than ``image``
    and ``caption`` are ignored.

    Returns:
        ``(images, captions)``: names in order of first appearance, and every name's captions in file
        order.

    Raises:
        ValueError: naming the file, when the header lacks ``image``/``caption``, when a row has more
            fields than the header (an unquoted comma) or when a row lacks the image or the caption.
    """
    path = Path(path)
    images: list[str] = []
    captions: dict[str, list[str]] = {}
    # utf-8-sig: files saved by Excel and some Kaggle mirrors start with a byte-order mark.
    with path.open(newline="", encoding="utf-8-sig") as handle:
        reader = csv.reader(handle)
        header = next(reader, None)
        columns = [name.strip().lower() for name in header or []]
        missing = [name for name in CAPTIONS_HEADER if name not in columns]
        if missing:
            raise ValueError(
                f"{path}: not a Flickr8k captions file: the header row must name the columns "
                f"{','.join(CAPTIONS_HEADER)} (missing {', '.join(missing)}; found {header!r})"
            )
        image_col, caption_col = columns.index("image"), columns.index("caption")
        for row in reader:
            if not any(value.strip() for value in row):
                continue
            if len(row) > len(columns):
                raise ValueError(
                    f"{path}, line {reader.line_num}: {len(row)} fields but the header has {len(columns)}; "
                    "a caption containing commas must be enclosed in double quotes"
                )
            image = row[image_col].strip() if image_col < len(row) else ""
            caption = row[caption_col].strip() if caption_col < len(row) else ""
            if not image or not caption:
                raise ValueError(
                    f"{path}, line {reader.line_num}: row without an image or a caption: {row!r}"
                )
            if image not in captions:
                images.append(image)
                captions[image] = []
            captions[image].append(caption)
    return images, captions


def write_captions_txt(path: str | Path, rows: Iterable[tuple[str, str]]) -> int:
    """Write ``(image, caption)`` rows as a Flickr8k ``captions.txt`` (header ``image,caption``).

    Quoting is left to the ``csv`` module, so captions with commas, quotes or newlines read back
    unchanged through :func:`read_captions_txt` (which strips surrounding whitespace). Missing parent
    folders are created. Returns the number of rows written, header excluded.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    count = 0
    with path.open("w", newline="", encoding="utf-8") as handle:
        # "\n" like the Kaggle file; the csv default "\r\n" would leave a "\r" in tools reading lines.
        writer = csv.writer(handle, lineterminator="\n")
        writer.writerow(CAPTIONS_HEADER)
        for image, caption in rows:
            writer.writerow((image, caption))
            count += 1
    return count


def load_flickr8k(source: str | Path, *, hub_split: str | None = None) -> CaptionCorpus:
    """Load a caption corpus from a folder, a ``captions.txt`` file or a Hugging Face dataset id.

    Args:
        source: One of
            * a folder in the Kaggle layout (``captions.txt`` and, optionally, ``Images/``);
            * a path to a ``captions.txt`` file: captions only, ``root`` is ``None``;
            * a Hub dataset id ``owner/name`` (only when no such local path exists), read with the
              ``datasets`` library, e.g. ``jxie/flickr8k`` (``image`` + ``caption_0..caption_4``) or
              ``tsystems/flickr8k`` (``image`` + ``image_filename`` + ``captions``). Without a file-name
              column, images are keyed ``<split>/<row:06d>``. Hub copies keep their own row order and
              often the 6000/1000/1000 split, so the report's splits are only reproduced by the Kaggle
              ``captions.txt``.
        hub_split: For Hub datasets, the split to read; ``None`` reads all splits one after another
            in the order the dataset lists them.

    Raises:
        FileNotFoundError: ``source`` is neither an existing path nor a Hub id, or the folder has no
            ``captions.txt``.
        ValueError: a malformed ``captions.txt`` (see :func:`read_captions_txt`).
        RuntimeError: the Hub dataset could not be loaded (``datasets`` missing, no network, unknown
            id, unrecognised columns); the message says how to use a local copy instead.
    """
    path = Path(source)
    if path.is_dir():
        captions_file = path / CAPTIONS_FILE
        if not captions_file.is_file():
            raise FileNotFoundError(
                f"{path} has no {CAPTIONS_FILE}; expected the Kaggle Flickr8k layout "
                f"DIR/{IMAGES_DIR}/*.jpg + DIR/{CAPTIONS_FILE}"
            )
        images, captions = read_captions_txt(captions_file)
        return CaptionCorpus(root=path, images=images, captions=captions)
    if path.is_file():
        images, captions = read_captions_txt(path)
        return CaptionCorpus(root=None, images=images, captions=captions)
    if isinstance(source, str) and _HUB_ID.match(source):
        return _load_from_hub(source, hub_split)
    raise FileNotFoundError(
        f"{source!s} is neither an existing folder or captions file nor a Hugging Face dataset id "
        "(owner/name)"
    )


_DOWNLOAD_HINT = (
    "Download Flickr8k in the Kaggle layout (a folder with Images/*.jpg and captions.txt, e.g. "
    "https://www.kaggle.com/datasets/adityajn105/flickr8k) and pass that folder instead."
)
_FILENAME_COLUMNS = ("image_filename", "file_name", "filename", "image_name", "image_id", "img_id")


def _load_from_hub(dataset_id: str, split: str | None) -> CaptionCorpus:
    """Read a Hub dataset with an ``image`` column and captions in ``caption_0..caption_k``,
    ``captions``, ``caption``, ``text`` or ``sentences`` (strings, lists of strings, or dicts with
    ``raw``). Images stay in the ``datasets`` object and are decoded only by ``open_image``."""
    try:
        import datasets  # heavy and optional: only the Hub path needs it
    except ImportError as exc:
        raise RuntimeError(
            f"loading {dataset_id!r} from the Hugging Face Hub needs the `datasets` package, which is not "
            f"installed (pip install datasets). {_DOWNLOAD_HINT}"
        ) from exc
    try:
        loaded = (
            datasets.load_dataset(dataset_id)
            if split is None
            else {split: datasets.load_dataset(dataset_id, split=split)}
        )
    except Exception as exc:  # network, authentication and unknown-id errors all end here
        raise RuntimeError(
            f"could not load {dataset_id!r} from the Hugging Face Hub ({exc}). {_DOWNLOAD_HINT}"
        ) from exc

    images: list[str] = []
    captions: dict[str, list[str]] = {}
    locations: dict[str, tuple[Any, int]] = {}
    for split_name, table in loaded.items():
        columns = list(table.column_names)
        if "image" not in columns:
            raise RuntimeError(
                f"{dataset_id!r} split {split_name!r} has no 'image' column ({columns}). {_DOWNLOAD_HINT}"
            )
        per_row = _hub_captions(table, columns)
        if per_row is None:
            raise RuntimeError(
                f"{dataset_id!r} split {split_name!r}: no caption columns recognised in {columns}; expected "
                f"caption_0..caption_4, captions, caption, text or sentences. {_DOWNLOAD_HINT}"
            )
        name_col = next((c for c in _FILENAME_COLUMNS if c in columns), None)
        names = (
            [str(n) for n in table[name_col]]
            if name_col
            else [f"{split_name}/{i:06d}" for i in range(len(table))]
        )
        for index, (name, row_captions) in enumerate(zip(names, per_row, strict=True)):
            if name not in captions:
                images.append(name)
                captions[name] = []
                locations[name] = (table, index)
            captions[name].extend(c.strip() for c in row_captions if c and c.strip())

    def load_image(name: str) -> Image.Image:
        table, index = locations[name]
        return table[index]["image"]

    return CaptionCorpus(root=None, images=images, captions=captions, image_loader=load_image)


def _hub_captions(table: Any, columns: list[str]) -> list[list[str]] | None:
    """Every row's captions, read column-wise so that no image gets decoded; ``None`` if no column fits."""
    numbered = sorted(
        (c for c in columns if re.fullmatch(r"caption_\d+", c)), key=lambda c: int(c.split("_")[1])
    )
    if numbered:
        return [list(row) for row in zip(*(table[c] for c in numbered), strict=True)]
    for column in ("captions", "caption", "text", "sentences"):
        if column in columns:
            return [_as_caption_list(value) for value in table[column]]
    return None


def _as_caption_list(value: Any) -> list[str]:
    if isinstance(value, str):
        return [value]
    if isinstance(value, dict):  # e.g. {"raw": [...]} column-of-structs layouts
        value = value.get("raw", [])
        return [value] if isinstance(value, str) else list(value)
    return [item["raw"] if isinstance(item, dict) else str(item) for item in value]


def _first_caption_pairs(corpus: CaptionCorpus, names: Iterable[str]) -> list[ImageCaption]:
    return [ImageCaption(name, corpus.captions[name][0]) for name in names]


def captioning_split(corpus: CaptionCorpus) -> tuple[list[ImageCaption], list[ImageCaption]]:
    """The report's captioning split: ``(train, validation)``.

    Each image contributes one pair with its *first* caption; images keep their first-appearance order;
    the first ``int(0.8 * n)`` images train, the remaining ones validate (6472 / 1619 on Flickr8k).
    Use :func:`captioning_val_references` for the 5 references BLEU needs.
    """
    if not corpus.images:
        raise ValueError("cannot split an empty caption corpus")
    n_train = int(CAPTIONING_TRAIN_FRACTION * len(corpus.images))
    return (
        _first_caption_pairs(corpus, corpus.images[:n_train]),
        _first_caption_pairs(corpus, corpus.images[n_train:]),
    )


def captioning_val_references(corpus: CaptionCorpus) -> dict[str, list[str]]:
    """All reference captions of every validation image of :func:`captioning_split`, in split order."""
    _, validation = captioning_split(corpus)
    return {pair.image: list(corpus.captions[pair.image]) for pair in validation}


def text_to_image_train_size(n_images: int) -> int:
    """How many leading images train the text-to-image models, out of ``n_images``.

    ``LORA_TRAIN_IMAGES`` (7000, the report's number) when the corpus is larger than that, which leaves
    1091 test prompts on Flickr8k. Smaller corpora (Shapes) would have no test prompts under that rule, so
    they fall back to the captioning rule ``int(0.8 * n)``. The rule jumps at 7000 images; nothing in
    between is used in practice.
    """
    if n_images > LORA_TRAIN_IMAGES:
        return LORA_TRAIN_IMAGES
    return int(CAPTIONING_TRAIN_FRACTION * n_images)


def text_to_image_split(corpus: CaptionCorpus) -> tuple[list[ImageCaption], list[str]]:
    """The report's text-to-image split: ``(lora_train, test_prompts)``.

    ``lora_train`` pairs the first :func:`text_to_image_train_size` images with their first caption;
    ``test_prompts`` are the first captions of the remaining images, in order (7000 / 1091 on Flickr8k).
    """
    if not corpus.images:
        raise ValueError("cannot split an empty caption corpus")
    n_train = text_to_image_train_size(len(corpus.images))
    train = _first_caption_pairs(corpus, corpus.images[:n_train])
    prompts = [corpus.captions[name][0] for name in corpus.images[n_train:]]
    return train, prompts
