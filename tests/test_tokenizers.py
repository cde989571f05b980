"""Tokenizers (issue 10, item 7): bytes stay the default, `bpe:N` trains a byte-level BPE on the training split (cached
by content hash), a `tokenizer.json` file is read with the `tokenizers` library, and validation stays in bits per
byte so that runs with different tokenizers compare."""
import math
import os

import pytest
import torch

pytest.importorskip("tokenizers")

from lrm_mup import data as data_mod  # noqa: E402
from lrm_mup.data import load_corpus  # noqa: E402
from lrm_mup.errors import ConfigError  # noqa: E402
from lrm_mup.training import TrainConfig  # noqa: E402
from lrm_mup.training.engine import Run  # noqa: E402

DATA = os.path.abspath("tests/data/shakespeare")


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return tmp_path_factory.mktemp("cache")


@pytest.fixture(scope="module")
def bpe(cache):
    return load_corpus(DATA, cache_dir=cache, progress=False, tokenizer="bpe:320")


def test_bytes_stay_the_default_and_bits_per_byte_is_nats_over_ln2():
    corpus = load_corpus(DATA, progress=False)
    assert corpus.train.dtype == torch.uint8 and corpus.vocab == 256 and corpus.val_bytes is None
    assert corpus.bits_per_byte(1.5) == 1.5 / math.log(2)
    assert TrainConfig().vocab == 256


def test_bpe_is_trained_on_the_training_split_and_decodes_back_to_it_byte_for_byte(bpe, cache):
    raw = load_corpus(DATA, progress=False)
    assert bpe.vocab == 320 and int(bpe.train.max()) < 320 and bpe.val_bytes == len(raw.val)
    assert len(bpe.train) < 0.8 * len(raw.train)  # merges: fewer tokens than bytes
    (path,) = (cache / "tokenizers").iterdir()
    tok = data_mod.load_tokenizer(str(path), b"")
    assert tok.decode(bpe.train.tolist()).encode() == bytes(raw.train.tolist())
    assert tok.decode(bpe.val.tolist()).encode() == bytes(raw.val.tolist())


def test_bpe_is_cached_by_content_hash(bpe, cache):
    (path,) = (cache / "tokenizers").iterdir()
    stamp = path.stat().st_mtime_ns
    again = load_corpus(DATA, cache_dir=cache, progress=False, tokenizer="bpe:320")
    assert torch.equal(again.train, bpe.train) and path.stat().st_mtime_ns == stamp
    other = data_mod.load_tokenizer("bpe:320", b"other training text\n" * 50, cache)
    assert len(list((cache / "tokenizers").iterdir())) == 2 and other.get_vocab_size() <= 320


def test_a_users_tokenizer_json_is_read(bpe, cache, tmp_path):
    raw = load_corpus(DATA, progress=False)
    mine = tmp_path / "tokenizer.json"
    data_mod.load_tokenizer("bpe:320", bytes(raw.train.tolist()), cache).save(str(mine))
    corpus = load_corpus(DATA, progress=False, tokenizer=str(mine))
    assert torch.equal(corpus.val, bpe.val) and corpus.vocab == bpe.vocab
    assert TrainConfig(tokenizer=str(mine)).vocab == data_mod.load_tokenizer(str(mine), b"").get_vocab_size()


@pytest.mark.parametrize("spec, message", [("bpe:100", "needs N > 256"), ("nope.json", "neither a tokenizer.json")])
def test_a_bad_tokenizer_is_one_line(spec, message):
    with pytest.raises(ConfigError, match=message):
        TrainConfig(tokenizer=spec)


def test_a_bad_tokenizer_file_is_one_line(tmp_path):
    bad = tmp_path / "t.json"
    bad.write_text("{}")
    with pytest.raises(ConfigError, match="is not a tokenizers tokenizer.json"):
        TrainConfig(tokenizer=str(bad))


def test_validation_of_a_bpe_run_is_in_bits_per_byte(bpe, one_thread):
    """A model that predicts uniformly over V tokens scores log2(V) bits per token, i.e. log2(V) · tokens / bytes
    of the validation split in bits per byte: the conversion, checked exactly on a zeroed readout."""
    cfg = TrainConfig(tokenizer="bpe:320", width=32, base_width=16, depth=1, head_dim=8, context=16, batch=4,
                      eval_batches=2, data=DATA, device="cpu")
    assert cfg.vocab == 320
    run = Run.create(cfg, bpe, progress=False)
    assert run.model.head.weight.shape[0] == 320
    with torch.no_grad():
        run.model.head.weight.zero_()
    expected = math.log2(320) * len(bpe.val) / bpe.val_bytes
    assert run.evaluate() == pytest.approx(expected, rel=1e-6)
    record = next(run.steps(1))
    assert math.isfinite(record.loss)


def test_a_corpus_of_another_tokenizer_is_refused(bpe):
    cfg = TrainConfig(width=32, base_width=16, depth=1, head_dim=8, context=16, data=DATA)
    with pytest.raises(ConfigError, match="the corpus has a vocabulary of 320 tokens"):
        Run.create(cfg, bpe, progress=False)


def test_train_takes_tokenizer_on_the_command_line(tmp_path, monkeypatch, capsys):
    from lrm_mup import cli

    monkeypatch.setenv("LRM_MUP_CACHE", str(tmp_path / "cache"))
    status = cli.main(["train", "--tokenizer", "bpe:300", "--width", "32", "--base-width", "16", "--head-dim", "8",
                       "--depth", "1", "--steps", "2", "--batch", "2", "--context", "16", "--eval-batches", "1",
                       "--data", DATA, "--device", "cpu", "--quiet", "--out", str(tmp_path / "run")])
    assert status == 0 and "bits/byte" in capsys.readouterr().out
    assert len(list((tmp_path / "cache" / "tokenizers").glob("bpe-300-*.json"))) == 1
