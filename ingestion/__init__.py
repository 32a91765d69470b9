"""The upload edge: HTTP API, image catalog and its projection."""
