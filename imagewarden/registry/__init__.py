"""Registry resolution: host mapping, auth, manifests and the aiohttp client.

``RegistryClient.resolve(ref, platform=...)`` answers which digest a node will pull, for which
platforms the image exists and how large it is. The checker wraps it with caching.
"""

from imagewarden.registry.client import RegistryClient, Resolution

__all__ = ["RegistryClient", "Resolution"]
