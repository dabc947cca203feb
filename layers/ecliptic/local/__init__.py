"""Local runtime, HTTP server and CLI. Never imported by deployed handlers."""
