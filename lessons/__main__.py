"""``python -m lessons demo``: the main job (see :mod:`lessons.demo`); ``exercises``: learner copies;
``book``: the notebooks as a static web site (:mod:`lessons.book`)."""

from __future__ import annotations

import sys


def _demo(argv: list[str]) -> int:
    from lessons import demo

    return demo.main(argv)


def _exercises(argv: list[str]) -> int:
    from lessons import exercises

    return exercises.main(argv)


def _book(argv: list[str]) -> int:
    from lessons import book  # needs the "book" extra: imported only when asked for

    return book.main(argv)


COMMANDS = {"demo": _demo, "exercises": _exercises, "book": _book}


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] not in COMMANDS:
        print(f"usage: python -m lessons {{{','.join(COMMANDS)}}} [options]  (add -h for a command's options)")
        return 2
    return COMMANDS[argv[0]](argv[1:])


if __name__ == "__main__":
    sys.exit(main())
