"""The policy language: grammar, parser, checker, compiler, formatter; nothing else of Tessera."""
