"""dynrec: learn users' changing interests from their behaviour stream and recommend in real time."""

from dynrec.errors import DataError, DynrecError, NotFittedError, UnknownIdError

__all__ = ["DataError", "DynrecError", "NotFittedError", "UnknownIdError", "__version__"]
__version__ = "0.1.0"
