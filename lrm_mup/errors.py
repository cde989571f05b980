"""Every error a user can fix is an `LrmMupError`: one line that names the bad value and says what to do.

The CLI catches this one type (exit status 2, the message on stderr); Python callers may catch the area's subclass.
Each subclass also derives from the built-in type older callers caught (ValueError, FileNotFoundError, ...), so
`except ValueError` around `parametrize` keeps working.
"""
from __future__ import annotations


class LrmMupError(Exception):
    """Base of every user-fixable lrm-mup error (one-line message)."""


class ConfigError(LrmMupError, ValueError):
    """A training or model config field has a value the run cannot be built with."""


class ShapeError(LrmMupError, ValueError):
    """Base/delta/target models that do not fit together."""


class RoleError(LrmMupError, ValueError):
    """A matrix layout lrm-mup will not guess about (names the module and what to do)."""


class RecipeError(LrmMupError, ValueError):
    """Arguments of `parametrize` / `build_optimizer` outside what is allowed."""


class DataError(LrmMupError):
    """The corpus cannot be fetched, read or split."""


class RecordError(LrmMupError, ValueError):
    """A typed record (JSON) of another schema or version, or with missing/ill-typed fields."""


class MissingError(LrmMupError, FileNotFoundError):
    """A file or folder the user named (or that a stage needs) does not exist."""


class RunFolderError(LrmMupError, FileExistsError):
    """A run folder that is occupied or incomplete (not empty, locked by another process, ...)."""


class SweepError(LrmMupError, ValueError):
    """A bad sweep file, sweep folder or storage."""


class TransferError(LrmMupError, ValueError):
    """Transfer input that does not fit (best settings, widths, run folders)."""


class CoordCheckError(LrmMupError, ValueError):
    """Coordinate-check arguments outside what is allowed."""
