"""internvideo-fast: a performance-first PyTorch library for InternVideo."""

from internvideo_fast import _extension
from internvideo_fast._extension import HAS_C

__version__ = "0.1.0"
__all__ = ["HAS_C", "__version__", "_extension"]
