"""Ray Serve applications: the Embedder deployment and the search app."""
