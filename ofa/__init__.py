"""ofa: train one elastic supernet, specialize it for any device without retraining."""
from elastic.errors import OFAError

__all__ = ["OFAError"]
__version__ = "0.1.0"
