"""The dashboard: server-rendered pages at `/` over the same handlers as the API."""
