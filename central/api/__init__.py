"""HTTP API (aiohttp): thin handlers that parse, call one service method and render."""
