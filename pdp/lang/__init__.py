"""The policy language: grammar, parser, checker, compiler, formatter, policy tests."""
