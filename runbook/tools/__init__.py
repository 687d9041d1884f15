"""Layer 7, tools on the side: the command line, the papermill runner, LiteLLM's
migrations and the demo data."""
