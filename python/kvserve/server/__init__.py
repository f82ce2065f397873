"""The OpenAI-compatible HTTP server (FastAPI + uvicorn): `kvserve serve`, or build_app() in
kvserve.server.app. Imported only by them, so `import kvserve` works without the server's packages."""
