"""The HTTP service: a FastAPI app (`create_app`) over a saved model, a state store and the
incremental updater — events in, live recommendations out. Run it with ``dynrec serve``."""

from dynrec.service.app import create_app
from dynrec.service.settings import ServiceSettings

__all__ = ["ServiceSettings", "create_app"]
