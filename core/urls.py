from django.urls import path

from core import api

urlpatterns = [
    path("me", api.MeView.as_view(), name="me"),
    path("quota", api.QuotaView.as_view(), name="quota"),
    path("keys", api.KeyListCreateView.as_view(), name="key-list"),
    path("keys/<int:key_id>", api.KeyDetailView.as_view(), name="key-detail"),
]
