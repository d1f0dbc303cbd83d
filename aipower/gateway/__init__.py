"""Domain layer: routing, billing, limits. Never imports starlette, sqlalchemy, httpx, aiohttp or redis."""
