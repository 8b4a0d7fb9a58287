import logging
import time

import orjson

_STANDARD = set(logging.makeLogRecord({}).__dict__) | {"message", "asctime"}


class JSONFormatter(logging.Formatter):
    """One JSON object per line; fields passed with ``extra=`` become keys."""

    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        for key, value in record.__dict__.items():
            if key not in _STANDARD and not key.startswith("_"):
                entry[key] = value
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        return orjson.dumps(entry, default=str).decode()


class OutageWithoutTraceback(logging.Filter):
    """For libraries that log a full traceback each time a connection to Redis fails
    (channels_redis: about one a second per process during an outage): the record
    keeps its message and gains the error's one-line summary; other errors keep
    their traceback."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.exc_info and _is_connection_error(record.exc_info[1]):
            error = record.exc_info[1]
            record.msg = f"{record.getMessage().rstrip(':')}: {type(error).__name__}: {error}"
            record.args = None
            record.exc_info = record.exc_text = None
        return True


def _is_connection_error(error: BaseException | None) -> bool:
    from redis.exceptions import ConnectionError as RedisConnectionError
    from redis.exceptions import TimeoutError as RedisTimeoutError

    return isinstance(error, (RedisConnectionError, RedisTimeoutError, OSError))
