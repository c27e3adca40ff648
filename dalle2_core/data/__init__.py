"""Training data: image + caption folders."""

from dalle2_core.data.folder import IMAGE_EXTENSIONS, LAYOUTS, METADATA_FILE, ImageTextFolder

__all__ = ["IMAGE_EXTENSIONS", "LAYOUTS", "METADATA_FILE", "ImageTextFolder"]
