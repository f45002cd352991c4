"""The operator console at ``/console`` on the HTTP port of ``tessera serve``: pages that
show and govern every agent, server-rendered (Starlette and Jinja2), signed in with
Tessera's own issuer. It reads every plane, so it lives in the top layer and is handed to
the composition root as an HTTP extension (:mod:`pdp.serve.extensions`).
"""
