"""The frontend API (v1): HTTPS with mutual TLS, JSON (DESIGN.md section 3)."""
