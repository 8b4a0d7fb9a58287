from django.urls import path, re_path

from chat import openai_api
from chat.http import ApiError


async def _not_found(request, path=""):
    return openai_api.openai_error(ApiError(404, "not_found", f"Unknown endpoint: {request.method} {request.path}."))


urlpatterns = [
    path("chat/completions", openai_api.chat_completions, name="openai-chat-completions"),
    path("models", openai_api.models, name="openai-models"),
    path("models/<str:name>", openai_api.model_detail, name="openai-model-detail"),
    re_path(r"^(?P<path>.*)$", _not_found),
]
