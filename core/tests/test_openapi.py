import pytest

pytestmark = pytest.mark.django_db


def test_schema_documents_every_endpoint_with_errors(client):
    response = client.get("/api/schema/", HTTP_ACCEPT="application/json")
    assert response.status_code == 200
    schema = response.json()
    assert schema["openapi"].startswith("3.")
    assert "apiKey" in schema["components"]["securitySchemes"]
    for path, operations in schema["paths"].items():
        for method, operation in operations.items():
            codes = set(operation["responses"])
            assert "401" in codes, f"{method.upper()} {path} does not document 401"
            assert any(code.startswith("2") for code in codes)


@pytest.mark.parametrize("page", ["/docs", "/redoc"])
def test_docs_pages_use_vendored_assets(client, page):
    response = client.get(page)
    assert response.status_code == 200
    html = response.content.decode()
    for cdn in ("cdn.jsdelivr", "unpkg.com", "fonts.googleapis", "fonts.gstatic"):
        assert cdn not in html
    assert "/static/drf_spectacular_sidecar/" in html
    # No inline script without this response's CSP nonce.
    nonce = (
        response["Content-Security-Policy"].split("'nonce-")[1].split("'")[0]
        if "'nonce-" in response["Content-Security-Policy"]
        else None
    )
    for tag in html.split("<script")[1:]:
        opening = tag.split(">", 1)[0]
        assert "src=" in opening or (nonce and f'nonce="{nonce}"' in opening), opening
