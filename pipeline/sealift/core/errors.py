"""Errors that the CLI turns into one line and an exit code.

UserError (exit 2): the input is wrong (a missing shard, a corrupted bundle, an
unknown model name); the message says what and where, the hint what to do.
Failure (exit 1): the input was fine but the work failed (a verification
mismatch, a build that bentoml refused).

    SealiftError
     +-- UserError (exit 2)
     |    +-- NotInStoreError (also a LookupError)
     +-- Failure (exit 1)

BentoML's own exceptions are translated into these in sealift.model._bentoml only.
"""

from __future__ import annotations


class SealiftError(Exception):
    exit_code = 1

    def __init__(self, message: str, *, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def one_line(self) -> str:
        return f"{self.message} ({self.hint})" if self.hint else self.message


class UserError(SealiftError):
    """Bad input: exit code 2, nothing written."""

    exit_code = 2


class Failure(SealiftError):
    """The work failed: exit code 1."""

    exit_code = 1


class NotInStoreError(UserError, LookupError):
    """A model or bento that the Bento store does not hold (exit code 2); `ref` is what was asked for."""

    def __init__(self, message: str, *, ref: str, hint: str | None = None) -> None:
        super().__init__(message, hint=hint)
        self.ref = ref
