"""A real OpenID Connect provider for testing Tidegate's OAuth 2.0 resource server."""
