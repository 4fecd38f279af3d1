"""Tables and lines on stdout: rich tables on a terminal (fitted to its width), plain aligned text
when piped or redirected (no colour codes, no box drawing, no blank lines around tables)."""

from __future__ import annotations

import sys
import textwrap
from typing import IO, Any, Sequence

#: (header, "left" | "right") of each column.
Columns = Sequence[tuple[str, str]]


class Output:
    """Where a subcommand prints. `rich`: None = a terminal gets rich tables, anything else plain
    text; `width`: the rich console's width (None: the terminal's)."""

    #: Width plain text is wrapped to.
    PLAIN_WIDTH = 80

    def __init__(self, stream: IO[str] | None = None, rich: bool | None = None, width: int | None = None) -> None:
        self.stream = stream if stream is not None else sys.stdout
        isatty = getattr(self.stream, "isatty", None)
        self.rich = (bool(isatty and isatty())) if rich is None else rich
        self._width = width
        self._console: Any = None

    def console(self) -> Any:
        """The rich `Console` (made on first use)."""
        if self._console is None:
            from rich.console import Console

            self._console = Console(file=self.stream, width=self._width, highlight=False)
        return self._console

    def line(self, text: str) -> None:
        """A paragraph of text (markup-free), wrapped to the width, continuation lines indented."""
        if self.rich:
            self.console().print(text, markup=False)
        else:
            self.stream.write(textwrap.fill(text, self.PLAIN_WIDTH, subsequent_indent="  ",
                                            break_on_hyphens=False) + "\n")

    def table(self, title: str, columns: Columns, rows: Sequence[Sequence[str]]) -> None:
        """A table: `rows` of strings, one per column of `columns`, under `title` (when not empty)."""
        if self.rich:
            from rich.table import Table

            table = Table(title=title or None, title_justify="left", pad_edge=False)
            for header, justify in columns:
                table.add_column(header, justify=justify, overflow="fold")
            for row in rows:
                table.add_row(*row)
            self.console().print(table)
            return
        widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, (h, _) in enumerate(columns)]

        last_left = columns[-1][1] == "left"
        if last_left:  # wrap the last (text) column to the width
            prefix = sum(widths[:-1]) + 2 * (len(widths) - 1)
            widths[-1] = min(widths[-1], max(20, self.PLAIN_WIDTH - prefix))

        def fmt(cells: Sequence[str]) -> str:
            out = [c.rjust(w) if justify == "right" else c.ljust(w)
                   for c, w, (_, justify) in zip(cells[:-1], widths, columns)]
            tail = [cells[-1]]
            if last_left:
                tail = textwrap.wrap(cells[-1], widths[-1], break_on_hyphens=False) or [""]
            elif columns[-1][1] == "right":
                tail = [cells[-1].rjust(widths[-1])]
            first = "  ".join(out + [tail[0]]).rstrip()
            pad = " " * (sum(widths[:-1]) + 2 * (len(widths) - 1))
            return "\n".join([first] + [pad + more for more in tail[1:]])

        if title:
            self.stream.write(textwrap.fill(title, self.PLAIN_WIDTH, subsequent_indent="  ",
                                            break_on_hyphens=False) + "\n")
        self.stream.write(fmt([h for h, _ in columns]) + "\n")
        for row in rows:
            self.stream.write(fmt(row) + "\n")


def human_bytes(n: float) -> str:
    """`1536` → `1.5 KiB` (B, KiB, MiB, GiB, TiB)."""
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if n < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return str(n)
