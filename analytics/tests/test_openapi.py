import pytest

pytestmark = pytest.mark.django_db


def test_analytics_endpoints_are_documented_with_their_parameters_and_errors(client):
    schema = client.get("/api/schema/", HTTP_ACCEPT="application/json").json()
    expected = {
        "summary": {"from", "to", "user", "granularity"},
        "timeseries": {"metric", "model", "granularity", "from", "to", "user"},
        "breakdown": {"by", "order", "limit", "granularity", "from", "to", "user"},
        "export": {"format", "by", "granularity", "from", "to", "user"},
    }
    for name, parameters in expected.items():
        operation = schema["paths"][f"/api/analytics/{name}"]["get"]
        assert {p["name"] for p in operation["parameters"]} == parameters
        assert {"200", "400", "401", "403", "404", "429"} <= set(operation["responses"])
        assert operation["responses"]["400"]["content"]["application/json"]["schema"]["$ref"].endswith("/Error")
    summary = schema["components"]["schemas"]["Summary"]["properties"]
    assert {"from", "to", "requests", "latency_p95_ms", "as_of"} <= set(summary)
    metric = next(p for p in schema["paths"]["/api/analytics/timeseries"]["get"]["parameters"] if p["name"] == "metric")
    assert "latency_p95_ms" in metric["schema"]["enum"]
