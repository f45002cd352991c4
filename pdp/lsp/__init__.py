"""``tessera lsp``: a language server for `.pol` files (diagnostics, hover, definitions,
formatting), on the public functions of :mod:`pdp.lang`; see docs/editor.md."""
