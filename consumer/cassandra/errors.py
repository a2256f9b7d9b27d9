"""Driver errors, classified once, by the driver's exception types.

| error | meaning for a guarded write | kind |
|---|---|---|
| `WriteTimeout` (write type CAS or SIMPLE), `ReadTimeout` | replicas did not answer in time: outcome unknown | RETRY |
| `OperationTimedOut` | the client gave up waiting: the outcome is unknown | RETRY |
| `Unavailable` | too few replicas alive to even try: nothing was written | RETRY |
| `NoHostAvailable`, `ConnectionException` | no coordinator could take the request | RETRY |
| `CoordinationFailure` (write/read failure), overload, bootstrapping | the coordinator failed the request | RETRY |
| `InvalidRequest` | Cassandra refuses this request (too large a value, say) | ROW |
| `Unauthorized`, `AuthenticationFailed`, `ConfigurationException`, `SyntaxException` | no write can succeed | FATAL |

Re-sending a conditional write after an unknown outcome is safe: the guard's condition is evaluated
again against whatever was stored, and a full tie rewrites the same value (docs/consumer.md).
An `InvalidRequest` for a table that no longer exists is FATAL, not ROW: the writer checks the driver's
schema metadata before refusing a row for it.
"""

from __future__ import annotations

import enum


class Failure(enum.Enum):
    RETRY = "retry"  # transient or unknown outcome: send the same round again after a pause
    ROW = "row"  # this entity's write is refused: dead-letter its record
    FATAL = "fatal"  # no write can succeed: stop the process


def classify(error: BaseException) -> Failure:
    from cassandra import (
        AuthenticationFailed,
        InvalidRequest,
        Unauthorized,
    )
    from cassandra.protocol import ConfigurationException, SyntaxException

    # ConfigurationException and SyntaxException are InvalidRequest's siblings under RequestValidationException.
    if isinstance(error, (Unauthorized, AuthenticationFailed, SyntaxException, ConfigurationException)):
        return Failure.FATAL
    if isinstance(error, InvalidRequest):
        return Failure.ROW
    # Timeouts (WriteTimeout with any write type, ReadTimeout, OperationTimedOut), Unavailable,
    # NoHostAvailable, lost connections, coordinator failures, overload: the world, not the record.
    return Failure.RETRY


def describe(error: BaseException) -> str:
    """A short, bounded name for an error, for counting: the type, and a timeout's write type (CAS: a
    Paxos round whose outcome is unknown; SIMPLE, BATCH_LOG, ...)."""
    write_type = getattr(error, "write_type", None)
    if write_type is not None:
        from cassandra import WriteType

        return f"{type(error).__name__}/{WriteType.value_to_name.get(write_type, write_type)}"
    return type(error).__name__
