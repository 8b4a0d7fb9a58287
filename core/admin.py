from django.contrib import admin
from django.contrib.auth.admin import UserAdmin as BaseUserAdmin

from core.models import APIKey, User


@admin.register(User)
class UserAdmin(BaseUserAdmin):
    ordering = ["email"]
    list_display = ["email", "display_name", "tier", "is_staff", "is_active", "created_at"]
    list_filter = ["tier", "is_staff", "is_active"]
    search_fields = ["email", "display_name"]
    readonly_fields = ["created_at", "updated_at", "last_login"]
    fieldsets = [
        (None, {"fields": ["email", "password"]}),
        ("Profile", {"fields": ["display_name", "tier"]}),
        ("Permissions", {"fields": ["is_active", "is_staff", "is_superuser", "groups", "user_permissions"]}),
        ("Dates", {"fields": ["last_login", "created_at", "updated_at"]}),
    ]
    add_fieldsets = [(None, {"classes": ["wide"], "fields": ["email", "tier", "password1", "password2"]})]


@admin.register(APIKey)
class APIKeyAdmin(admin.ModelAdmin):
    """Keys are issued through the API or `manage.py issuekey`; the admin can rename,
    re-scope, set limits and revoke, and never sees the hash."""

    list_display = ["prefix", "name", "user", "created_at", "last_used_at", "expires_at", "revoked_at"]
    list_filter = ["revoked_at"]
    search_fields = ["prefix", "name", "user__email"]
    list_select_related = ["user"]
    exclude = ["secret_hash"]
    readonly_fields = ["prefix", "user", "created_at", "last_used_at"]
    actions = ["revoke"]

    def has_add_permission(self, request) -> bool:
        return False

    @admin.action(description="Revoke selected keys")
    def revoke(self, request, queryset):
        from core.services import api_key_revoke

        for key in queryset.filter(revoked_at__isnull=True):
            api_key_revoke(key=key)
