"""``python -m lessons demo``: the main job (see :mod:`lessons.demo`); ``exercises``: learner copies;
``book``: the notebooks as a static web site (:mod:`lessons.book`)."""

from __future__ import annotations

import sys


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    commands = {"demo": "lessons.demo", "exercises": "lessons.exercises", "book": "lessons.book"}
    if not argv or argv[0] not in commands:
        print("usage: python -m lessons {demo,exercises,book} [options]  (add -h for a command's options)")
        return 2
    import importlib

    return importlib.import_module(commands[argv[0]]).main(argv[1:])


if __name__ == "__main__":
    sys.exit(main())
