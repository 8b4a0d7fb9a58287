"""The staff dashboard: a page that polls two JSON endpoints for live figures
(core.live_metrics) and for usage (the analytics API)."""

from __future__ import annotations

from django.contrib.auth.decorators import login_required
from django.core.exceptions import PermissionDenied
from django.shortcuts import render
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter, extend_schema
from rest_framework.exceptions import ValidationError
from rest_framework.permissions import IsAdminUser, IsAuthenticated
from rest_framework.response import Response
from rest_framework.views import APIView

from core import live_metrics
from core.models import APIKey
from core.openapi import error_responses
from core.permissions import HasScopes


class IsStaff(IsAdminUser):
    """DRF's IsAdminUser (``is_staff``) with a message that says what is refused."""

    message = "Only staff can see the platform's performance."


@login_required
def dashboard_page(request):
    if not request.user.is_staff:
        raise PermissionDenied("The dashboard is for staff.")
    return render(request, "analytics/dashboard.html")


class StaffDashboardView(APIView):
    """The dashboard's JSON endpoints: staff only, and a key needs the admin scope."""

    permission_classes = [IsAuthenticated, HasScopes, IsStaff]
    required_scopes = (APIKey.Scope.ADMIN,)


class DashboardLiveView(StaffDashboardView):
    """Live figures summed over every worker process, and the guide's target table."""

    @extend_schema(responses={200: OpenApiTypes.OBJECT, **error_responses(401, 403)})
    def get(self, request):
        return Response(live_metrics.live())


class DashboardHistoryView(StaffDashboardView):
    """Chart points over the last hour (every sample) or day (every 5 minutes)."""

    @extend_schema(
        parameters=[OpenApiParameter("range", str, enum=list(live_metrics.HISTORY_RANGES), default="hour")],
        responses={200: OpenApiTypes.OBJECT, **error_responses(400, 401, 403)},
    )
    def get(self, request):
        span = request.query_params.get("range", "hour")
        if span not in live_metrics.HISTORY_RANGES:
            choices = ", ".join(live_metrics.HISTORY_RANGES)
            raise ValidationError({"range": [f"'{span}' is not one of: {choices}."]})
        return Response({"range": span, "points": live_metrics.history(span)})
