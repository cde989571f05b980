"""Input checks the tuning stages share, made before they write anything: the corpus loads and every context fits
both of its splits (a context as long as a split would only fail inside the first run, after its folder exists)."""
from __future__ import annotations

from collections.abc import Iterable

from ..data import Corpus


def check_contexts(corpus: Corpus, contexts: Iterable[int]) -> None:
    """DataError (one line, naming the context and the split's size) unless each context fits both splits."""
    for context in sorted(set(contexts)):
        corpus.batch("train", 1, context)
        next(corpus.val_batches(1, context, 1), None)
