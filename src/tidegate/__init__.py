"""Tidegate: a multi-tenant event gateway."""
