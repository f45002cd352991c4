"""The console's pages from their Jinja2 templates (autoescaped), and its static files."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import jinja2
from starlette.requests import Request
from starlette.responses import FileResponse, HTMLResponse, PlainTextResponse, Response
from starlette.routing import Route

from pep.console.sessions import Session

HERE = Path(__file__).parent
STATIC = {"console.css": "text/css", "console.js": "text/javascript"}


class Renderer:
    """Renders a template with the operator's session (their name and form token)."""

    def __init__(self) -> None:
        self.env = jinja2.Environment(
            loader=jinja2.FileSystemLoader(HERE / "templates"),
            autoescape=True,
        )

    def __call__(
        self,
        request: Request,
        template: str,
        context: Mapping[str, Any],
        session: Session | None,
        status: int = 200,
    ) -> HTMLResponse:
        page = self.env.get_template(template).render(
            session=session, path=request.url.path, **context
        )
        return HTMLResponse(page, status)


async def static(request: Request) -> Response:
    """``/console/static/NAME``: the console's stylesheet and script, nothing else."""
    name = request.path_params["name"]
    if name not in STATIC:
        return PlainTextResponse("not found", 404)
    return FileResponse(HERE / "static" / name, media_type=STATIC[name])


STATIC_ROUTE = Route("/static/{name}", static, methods=["GET"])
