"""What a request is once read: its params models (schemas), its spec and target, its
plan, admission, quality presets, usage, and the image files it gives."""
