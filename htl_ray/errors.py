"""The one type of error a user can fix: the command line prints it as one `error:` line and
exits 2. Anything else that escapes a command is a bug in htl-ray and keeps its traceback.

It subclasses ValueError so that callers written against the older, plainer errors still
catch it."""

from __future__ import annotations

REPORT_TO = "the issue tracker of the repository you installed htl-ray from"


class UserError(ValueError):
    """Something the user gave (a file, a key, an option, a server address) is not what was
    expected; the message names it and says what was expected."""


def describe_os_error(exc: OSError) -> str:
    """`PATH: reason` for an OS error about a user's path (permission, not a folder, full
    disk), so it can be shown as one line."""
    names = [str(n) for n in (exc.filename, exc.filename2) if n]
    reason = exc.strerror or str(exc)
    return f"{' → '.join(names)}: {reason}" if names else reason


def first_line(exc: BaseException | str, limit: int = 200) -> str:
    """An exception's (or a text's) first line (an exception's type when it has no message),
    for a one-line error."""
    lines = str(exc).strip().splitlines()
    return (lines[0] if lines else type(exc).__name__)[:limit]


def find_user_error(exc: BaseException | None) -> BaseException | None:
    """The user's mistake behind `exc`, if any: a UserError or an OS error, also when raised in
    a Ray task (RayTaskError.cause) or a Ray Train worker (WorkerGroupError.worker_failures,
    each wrapping the worker's exception) and re-raised wrapped or `from` it."""
    seen: set[int] = set()
    todo = [exc]
    while todo:
        e = todo.pop(0)
        if e is None or id(e) in seen:
            continue
        seen.add(id(e))
        if isinstance(e, (UserError, OSError)):
            return e
        # explicit links only: Ray's wrappers and `raise ... from exc`. Never __context__ (an
        # exception raised while another was handled): a bug in an `except OSError:` branch
        # is still a bug, not the user's missing file
        todo += [getattr(e, "cause", None), getattr(e, "_base_exc", None),
                 getattr(e, "controller_failure", None), e.__cause__,
                 *(getattr(e, "worker_failures", None) or {}).values()]
    return None
