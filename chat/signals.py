"""A change to any of a user's conversations (created, renamed, deleted, or
updated by a new message) drops their cached conversation list."""

from django.db.models.signals import post_delete, post_save
from django.dispatch import receiver

from chat.models import Conversation
from chat.selectors import recent_conversations_changed


@receiver([post_save, post_delete], sender=Conversation)
def conversation_changed(sender, instance: Conversation, **kwargs) -> None:
    recent_conversations_changed(instance.user_id)
