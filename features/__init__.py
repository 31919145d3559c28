"""What a feature is and how it is computed: definitions, sources, transformations.

Domain modules (``features.fruit``, ...) define feature groups; ``features.catalog``
finds them by name and version.
"""
