from asgiref.sync import sync_to_async
from django.urls import path
from django.views.decorators.csrf import csrf_exempt

from chat import api, api_send


@csrf_exempt  # both branches check CSRF themselves, for session callers only
async def conversation_messages(request, conversation_id: int):
    """GET lists a conversation's messages (DRF); POST sends one (async, may stream)."""
    if request.method == "POST":
        return await api_send.conversation_send(request, conversation_id=conversation_id)
    return await sync_to_async(api.MessageListView.as_view())(request, conversation_id=conversation_id)


urlpatterns = [
    path("models", api.ModelListView.as_view(), name="model-list"),
    path("models/<slug:name>", api.ModelDetailView.as_view(), name="model-detail"),
    path("conversations", api.ConversationListView.as_view(), name="conversation-list"),
    path("conversations/<int:conversation_id>", api.ConversationDetailView.as_view(), name="conversation-detail"),
    path(
        "conversations/<int:conversation_id>/export", api.ConversationExportView.as_view(), name="conversation-export"
    ),
    path("conversations/<int:conversation_id>/messages", conversation_messages, name="conversation-messages"),
    path("chat", api_send.chat, name="chat"),
    path("messages/<int:message_id>", api.MessageDetailView.as_view(), name="message-detail"),
    path("messages/<int:message_id>/cancel", api_send.message_cancel, name="message-cancel"),
    path("messages/<int:message_id>/regenerate", api_send.message_regenerate, name="message-regenerate"),
    path("messages/<int:message_id>/stream", api_send.message_stream, name="message-stream"),
    path("messages/<int:message_id>/feedback", api.MessageFeedbackView.as_view(), name="message-feedback"),
]
