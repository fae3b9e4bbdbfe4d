"""The HTTP service: a FastAPI app (`create_app`) over a saved model, a state store and the
incremental updater — events in, live recommendations out. Run it with ``dynrec serve``.

The service needs the ``serve`` extra (FastAPI, uvicorn, Prometheus client). Every import of this
package or a module in it runs this file first, so without the extra any of them is a
`dynrec.errors.MissingExtraError` naming it rather than a bare ``ModuleNotFoundError``."""

from dynrec.errors import requires_extra

with requires_extra("serve", "the HTTP service (dynrec serve)"):
    from dynrec.service.app import create_app
    from dynrec.service.settings import ServiceSettings

__all__ = ["ServiceSettings", "create_app"]
