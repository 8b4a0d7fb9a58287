from __future__ import annotations

from django.contrib.auth.base_user import AbstractBaseUser, BaseUserManager
from django.contrib.auth.models import PermissionsMixin
from django.db import models
from django.utils import timezone


class UserManager(BaseUserManager["User"]):
    use_in_migrations = True

    def create_user(self, email: str, password: str | None = None, **fields) -> User:
        if not email:
            raise ValueError("An email address is required")
        user = self.model(email=self.normalize_email(email).lower(), **fields)
        user.set_password(password)
        user.save(using=self._db)
        return user

    def create_superuser(self, email: str, password: str | None = None, **fields) -> User:
        fields.update(is_staff=True, is_superuser=True)
        return self.create_user(email, password, **fields)


class User(AbstractBaseUser, PermissionsMixin):
    class Tier(models.TextChoices):
        REGULAR = "regular", "Regular"
        PREMIUM = "premium", "Premium"

    email = models.EmailField(max_length=254)
    display_name = models.CharField(max_length=150, blank=True)
    tier = models.CharField(max_length=16, choices=Tier.choices, default=Tier.REGULAR)
    is_staff = models.BooleanField(default=False)
    is_active = models.BooleanField(default=True)
    created_at = models.DateTimeField(default=timezone.now)
    updated_at = models.DateTimeField(auto_now=True)

    objects = UserManager()

    USERNAME_FIELD = "email"
    EMAIL_FIELD = "email"
    REQUIRED_FIELDS: list[str] = []

    class Meta:
        db_table = "users"
        constraints = [models.UniqueConstraint(fields=["email"], name="idx_users_email")]

    def __str__(self) -> str:
        return self.email

    def clean(self) -> None:
        super().clean()
        self.email = self.__class__.objects.normalize_email(self.email).lower()


class APIKey(models.Model):
    """A programmatic credential. Only a SHA-256 digest of the secret is stored."""

    class Scope(models.TextChoices):
        CHAT = "chat", "Chat with models"
        CONVERSATIONS_READ = "conversations:read", "Read conversations"
        ANALYTICS_READ = "analytics:read", "Read analytics"
        ADMIN = "admin", "Administer keys and account"

    user = models.ForeignKey(User, on_delete=models.CASCADE, related_name="api_keys", db_index=False)
    name = models.CharField(max_length=100)
    prefix = models.CharField(max_length=16, unique=True)
    secret_hash = models.CharField(max_length=64)
    scopes = models.JSONField(default=list)
    rate_limit_per_minute = models.PositiveIntegerField(
        null=True, blank=True, help_text="Overrides the owner's tier limit for this key."
    )
    created_at = models.DateTimeField(default=timezone.now)
    last_used_at = models.DateTimeField(null=True, blank=True)
    expires_at = models.DateTimeField(null=True, blank=True)
    revoked_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        db_table = "api_keys"
        verbose_name = "API key"
        indexes = [models.Index(fields=["user"], name="idx_api_keys_user_id")]

    def __str__(self) -> str:
        return f"{self.prefix}… ({self.name})"

    def is_usable(self, now=None) -> bool:
        now = now or timezone.now()
        return self.revoked_at is None and (self.expires_at is None or self.expires_at > now)


class MetricSample(models.Model):
    """A snapshot of the platform's cumulative metrics, summed over every worker
    process (see core.live_metrics); consecutive samples give the dashboard's charts."""

    at = models.DateTimeField(default=timezone.now, db_index=True)
    data = models.JSONField()

    class Meta:
        db_table = "metric_samples"
        ordering = ["at"]

    def __str__(self) -> str:
        return f"metrics at {self.at:%Y-%m-%d %H:%M:%S}"
