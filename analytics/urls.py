from django.urls import path

from analytics import api

urlpatterns = [
    path("analytics/summary", api.SummaryView.as_view(), name="analytics-summary"),
    path("analytics/timeseries", api.TimeseriesView.as_view(), name="analytics-timeseries"),
    path("analytics/breakdown", api.BreakdownView.as_view(), name="analytics-breakdown"),
    path("analytics/export", api.ExportView.as_view(), name="analytics-export"),
]
