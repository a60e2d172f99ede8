"""Fisher caching shared by studies, `merge-search merge` and exports (see cache.py)."""
