"""imagewarden: check user-typed container images before a spawn, pre-pull configured ones.

The package is laid out as ``../shared/DESIGN.md`` describes: ``reference`` parses image
strings, ``policy`` decides on normalized names, ``registry`` resolves them, ``checker``
combines the three, and ``service``/``hub``/``prepull`` put the checker to work.
"""

__version__ = "0.1.0"
