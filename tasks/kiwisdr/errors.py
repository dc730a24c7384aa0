"""Typed receiver errors, split into transient (worth a retry) and permanent (never retried).

The split is what the capture task's retry condition reads: retrying a wrong password or
an untunable frequency only wastes the acquisition window and hammers the receiver.
"""

from __future__ import annotations


class KiwiSDRError(Exception):
    """Base class of every receiver error; ``receiver`` names the receiver when known."""

    transient: bool = False

    def __init__(self, message: str, *, receiver: str | None = None) -> None:
        self.receiver = receiver
        super().__init__(f"{receiver}: {message}" if receiver else message)


class TransientReceiverError(KiwiSDRError):
    """The receiver may well work on the next attempt."""

    transient = True


class PermanentReceiverError(KiwiSDRError):
    """Retrying cannot help: configuration or protocol is wrong."""

    transient = False


class ReceiverUnreachable(TransientReceiverError):
    """Connection refused, reset, or DNS/TCP failure before the handshake finished."""


class ReceiverBusy(TransientReceiverError):
    """``MSG too_busy=N``: every channel is taken."""


class ReceiverDown(TransientReceiverError):
    """``MSG down``: the receiver says it is temporarily out of service."""


class StreamStalled(TransientReceiverError):
    """No IQ frame arrived within the frame timeout."""


class StreamDropped(TransientReceiverError):
    """The server closed the websocket before the capture was complete."""


class AuthenticationFailed(PermanentReceiverError):
    """``MSG badp=N`` with N != 0, or ``password_timeout``."""


class ReceiverNotReady(TransientReceiverError):
    """``MSG badp=2`` (server still starting) or ``badp=6`` (database update in progress)."""


# ``MSG badp=N`` is a reason code (kiwisdr-protocol.md), not a boolean.
BADP_REASONS = {
    1: "wrong password",
    2: "server still starting",
    3: "admin connection not allowed from this IP",
    4: "no admin password set",
    5: "no multiple connections from the same IP",
    6: "database update in progress",
    7: "another admin connection is open",
}
TRANSIENT_BADP = frozenset({2, 6})


def bad_password_error(code: str | int, *, receiver: str | None = None) -> KiwiSDRError:
    """The typed error for ``MSG badp=<code>``: 2 and 6 are worth a retry, the rest are not."""
    try:
        n = int(code)
    except (TypeError, ValueError):
        n = -1
    reason = BADP_REASONS.get(n, "unknown reason")
    if n in TRANSIENT_BADP:
        return ReceiverNotReady(
            f"receiver refused the session: {reason} (badp={code})", receiver=receiver
        )
    return AuthenticationFailed(
        f"receiver refused the session: {reason} (badp={code})", receiver=receiver
    )


class FrequencyOutOfRange(PermanentReceiverError):
    """The RF frequency is outside what the receiver (and its down-converter) can tune."""


class GpsUnusable(PermanentReceiverError):
    """The receiver's GPS clock cannot time a capture (unlocked, or timestamps off)."""


class ProtocolError(PermanentReceiverError):
    """The server sent something the protocol does not allow (malformed frame, bad redirect)."""


def is_transient(exc: BaseException) -> bool:
    """True when ``exc`` is worth retrying.

    Unknown exceptions count as transient only when they are plain network errors
    (``OSError``/``TimeoutError``); anything else is a bug and should surface at once.
    """
    if isinstance(exc, KiwiSDRError):
        return exc.transient
    return isinstance(exc, (OSError, TimeoutError))
