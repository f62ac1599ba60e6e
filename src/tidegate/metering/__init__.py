"""Per-tenant usage meters (cost attribution)."""

from tidegate.metering.usage import HOUR_MS, Meter, UsageMeter

__all__ = ["HOUR_MS", "Meter", "UsageMeter"]
