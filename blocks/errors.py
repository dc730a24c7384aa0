"""The root of the project's exception hierarchy.

It lives in ``blocks/``, the lowest layer, so that configuration errors (a missing
setting, an unusable endpoint) and every error of ``tasks/`` share one root that a caller
can catch; ``tasks.errors`` re-exports it with the rest of the hierarchy. Plain Python.
"""

from __future__ import annotations


class RfAcquisitionError(Exception):
    """Root of the project's errors; ``transient`` says whether a retry may succeed.

    Subclasses set ``transient`` as a class attribute (a whole family is transient or
    not); an instance may override it (``RfAcquisitionError("...", transient=True)``).
    """

    transient: bool = False

    def __init__(self, *args: object, transient: bool | None = None) -> None:
        super().__init__(*args)
        if transient is not None:
            self.transient = transient
