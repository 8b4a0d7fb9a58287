from django.conf import settings
from django.contrib.auth.decorators import login_required
from django.shortcuts import render
from django.views.decorators.csrf import ensure_csrf_cookie


@login_required
@ensure_csrf_cookie
def chat_page(request):
    """The browser chat: conversations, streaming replies over the WebSocket."""
    return render(request, "chat/index.html", {"max_chars": settings.CHAT_MAX_MESSAGE_CHARS})
