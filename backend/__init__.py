"""The Label Studio ML backend: HTTP routes, Label Studio protocol, queue and worker jobs."""
