"""The Gemini planner: Files API uploads, the plan request and its response schema.

Only `errors` and `client.resolve_api_key` are light. The other modules import google-genai,
so callers import them inside the function that plans with Gemini.
"""
