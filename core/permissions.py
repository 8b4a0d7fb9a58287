from rest_framework.permissions import BasePermission

from core.authentication import KeyIdentity


class HasScopes(BasePermission):
    """API keys must carry every scope the view lists in ``required_scopes``
    (a tuple, or a dict of HTTP method to tuple).

    Session-authenticated users act with their whole account, so scopes do not
    narrow them; ``admin`` on a key implies every other scope.
    """

    message = "This API key lacks a required scope."

    def has_permission(self, request, view) -> bool:
        identity = request.auth
        if not isinstance(identity, KeyIdentity):
            return True
        required = getattr(view, "required_scopes", ())
        if isinstance(required, dict):
            required = required.get(request.method, ())
        missing = [scope for scope in required if not identity.allows(scope)]
        if missing:
            names = ", ".join(f"'{scope}'" for scope in missing)
            self.message = f"This API key lacks the {names} scope."
            return False
        return True
