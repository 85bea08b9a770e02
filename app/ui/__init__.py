"""The live page of a state: its HTML, script and stylesheet, served by app.api.ui (found with
importlib.resources, so a wheel serves them as a checkout does)."""
