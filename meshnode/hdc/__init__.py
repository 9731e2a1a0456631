"""HDC spaces, alignment, and LoRA delta compression (torch is optional: delta codecs need numpy only)."""
