"""The HTTP face: REST resources, Vertex-style prediction and an OpenAI-compatible API."""
