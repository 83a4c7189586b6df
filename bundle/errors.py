"""The bundle's input errors and the one-line report of them on the command line."""

from __future__ import annotations

import sys
import traceback
from types import TracebackType


class InputError(ValueError):
    """Bad input from a user: a file, a datalist or an option. Its message names the culprit."""


class RunError(InputError):
    """A run that cannot go on (e.g. a diverged loss); reported in one line like bad input."""


def find_input_error(exc: BaseException | None) -> InputError | None:
    """The `InputError` in the chain of causes and contexts of `exc`, if any."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        if isinstance(exc, InputError):
            return exc
        seen.add(id(exc))
        exc = exc.__cause__ or exc.__context__
    return None


def _excepthook(
    exc_type: type[BaseException], exc: BaseException, tb: TracebackType | None, _default=sys.excepthook
) -> None:
    found = find_input_error(exc)
    if found is None:
        _default(exc_type, exc, tb)
        return
    print(f"error: {found}", file=sys.stderr)


def install_excepthook() -> None:
    """Report an `InputError` (even when MONAI's config parser wrapped it) as `error: <message>`.

    Called from the configs' `initialize` step, so `python -m monai.bundle run` prints one clear
    line instead of a traceback for bad input; any other exception keeps its full traceback.
    """
    sys.excepthook = _excepthook


def format_error(exc: BaseException) -> str:
    """The one-line message of the `InputError` inside `exc`, or the formatted exception."""
    found = find_input_error(exc)
    return str(found) if found is not None else "".join(traceback.format_exception_only(type(exc), exc)).strip()


def check(condition: bool, message: str) -> None:
    """Raise an `InputError(message)` unless `condition` (for checks written in the configs)."""
    if not condition:
        raise InputError(message)


def check_whole_number(value, message: str) -> int:
    """`value` if it is an int >= 1 (not a bool), else an `InputError("<message>, got <value>")`."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise InputError(f"{message}, got {value!r}")
    return value


def as_bool(value: bool | str, name: str) -> bool:
    """Booleans from the command line arrive as "true"/"false" strings (Fire keeps them as text)."""
    if isinstance(value, str):
        if value.strip().lower() not in ("true", "false", "1", "0", "yes", "no"):
            raise InputError(f"{name} must be true or false, got {value!r}")
        return value.strip().lower() in ("true", "1", "yes")
    return bool(value)
