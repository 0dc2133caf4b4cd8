"""CLI registration (filled in by its stage)."""


def register(app, user_errors) -> None:
    return None
