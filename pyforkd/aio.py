"""asyncio counterparts (filled in below)."""
