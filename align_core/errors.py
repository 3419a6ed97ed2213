"""Errors with a reason: a bad row is quarantined with it, a bad request is reported with it."""

from __future__ import annotations

from collections.abc import Sequence


class RowRejected(Exception):
    """A source row that cannot become a sample. The materialiser turns it into a quarantine row.

    ``reason`` is a short stable code (one of ``REASONS``) that reports group by;
    ``detail`` is a sentence naming the field at fault and what was expected.
    """

    def __init__(self, reason: str, detail: str):
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


# The reason codes the built-in templates and the materialiser use; user templates may add their own.
MISSING_FIELD = "missing_field"
WRONG_TYPE = "wrong_type"
EMPTY_TEXT = "empty_text"
IDENTICAL_PAIR = "identical_pair"
INVALID_PREFERENCE = "invalid_preference"
UNSPLITTABLE_TRANSCRIPT = "unsplittable_transcript"
BAD_ROLES = "bad_roles"
UNDECODABLE = "undecodable"
TEMPLATE_EXCEPTION = "template_exception"
# Media (align_core.media): a path escaping --media-root, a file that is not there, bytes the modality's
# decoder (PIL, soundfile, PyAV) refuses, or placeholders that do not match the media items one to one.
MEDIA_OUTSIDE_ROOT = "media_outside_root"
MEDIA_MISSING = "media_missing"
MEDIA_UNDECODABLE = "media_undecodable"
MEDIA_COUNT_MISMATCH = "media_count_mismatch"

REASONS = (
    MISSING_FIELD,
    WRONG_TYPE,
    EMPTY_TEXT,
    IDENTICAL_PAIR,
    INVALID_PREFERENCE,
    UNSPLITTABLE_TRANSCRIPT,
    BAD_ROLES,
    UNDECODABLE,
    TEMPLATE_EXCEPTION,
    MEDIA_OUTSIDE_ROOT,
    MEDIA_MISSING,
    MEDIA_UNDECODABLE,
    MEDIA_COUNT_MISMATCH,
)


class UsageError(Exception):
    """A request that cannot be carried out as given (unknown template, unreadable source...).

    The CLI prints it as one line and exits 2.
    """


class TrainingFailed(RuntimeError):
    """A launched training run that exited with an error or without a result.

    ``summary`` is one line naming the exit code and the output_dir a rerun resumes from; the
    message adds ``tail``, the child's last output lines. ``exit_code`` is None when it exited 0.
    """

    def __init__(self, summary: str, tail: Sequence[str] = (), exit_code: int | None = None):
        super().__init__(summary + (". Last output:\n" + "\n".join(tail) if tail else ""))
        self.summary = summary
        self.tail = list(tail)
        self.exit_code = exit_code


class IntegrityError(UsageError):
    """A file whose bytes differ from the sha256 its manifest recorded: damaged on disk since it was
    written. Raised before the file is read; the message names the file and what to rebuild."""
