"""Generated CRI runtime.v1 ImageService client (see README.md here for version and regeneration)."""
